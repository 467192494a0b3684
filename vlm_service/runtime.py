"""Load what the server serves: device/dtype resolution, model, processor, tokenizer and the async engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlm_service.config import Config

log = logging.getLogger(__name__)

ACCEPTED_MIME_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelInfo:
    """What GetModelInfo reports."""

    model_id: str
    architecture: str
    max_context: int
    max_images: int
    max_pixels: int
    accepted_mime_types: tuple[str, ...] = ACCEPTED_MIME_TYPES
    vit_attention_backend: str = ""
    device: str = ""
    dtype: str = ""


@dataclass
class Runtime:
    """Everything the servicer needs: engine (reserve/release/generate/abort/stats), processor, model info."""

    engine: Any
    processor: Any
    info: ModelInfo
    tokenizer: Any = None
    model: Any = None
    extras: dict = field(default_factory=dict)

    def start(self) -> None:
        self.engine.start()

    async def stop(self, drain: bool) -> None:
        await self.engine.stop(drain)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda/cuda:N refused clearly where there is no GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> bfloat16 on CUDA, float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def resolve_model_path(cfg: Config) -> tuple[str, Path | None]:
    """(model id, checkpoint dir or None for random:<preset>) for demo / demo:<arch> / random:<preset> / a directory."""
    name = cfg.model.model
    if name == "demo" or name.startswith("demo:"):
        from vlm_service.models.demo import ensure_demo_model

        arch = name.split(":", 1)[1] if ":" in name else "qwen3_vl"
        return name, Path(ensure_demo_model(Path(cfg.server.state_dir) / "models", arch))
    if name.startswith("random:"):
        return name, None
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(f"--model {name!r}: not a directory, 'demo', 'demo:qwen2_5_vl' or 'random:<preset>'")
    return str(path), path


def _load_model(cfg: Config, path: Path | None, device: torch.device, dtype: torch.dtype):
    if path is None:
        from vlm_service.models import presets

        return presets.build_random(cfg.model.model.split(":", 1)[1], dtype=dtype, device=device,
                                    vit_attention=cfg.model.vit_attention_backend, seed=cfg.model.seed)
    from vlm_service.models.loader import load_model

    return load_model(path, dtype=dtype, device=device, vit_attention=cfg.model.vit_attention_backend)


def _model_info(model_id: str, model, cfg: Config, max_context: int, device, dtype) -> ModelInfo:
    backend = getattr(model, "vit_attention_backend", None) or cfg.model.vit_attention_backend
    return ModelInfo(model_id=model_id, architecture=model.spec.architecture, max_context=max_context,
                     max_images=cfg.server.limits.max_images_per_request,
                     max_pixels=cfg.server.limits.max_image_pixels, vit_attention_backend=str(backend),
                     device=str(device), dtype=str(dtype).removeprefix("torch."))


def load_runtime(cfg: Config) -> Runtime:
    """Resolve device and dtype, load model + processor + tokenizer and build the (not yet started) engine."""
    from vlm_service.engine import AsyncEngine
    from vlm_service.processor.processor import Processor

    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    model_id, path = resolve_model_path(cfg)
    log.info("loading %s on %s (%s)", model_id, device, dtype)
    model = _load_model(cfg, path, device, dtype)
    if path is None:  # random:<preset> has no tokenizer files of its own
        from vlm_service.models import presets

        path = presets.tokenizer_dir(Path(cfg.server.state_dir))
    processor = Processor.from_pretrained(path, max_pixels_limit=cfg.server.limits.max_image_pixels,
                                          max_images=cfg.server.limits.max_images_per_request)
    tokenizer = processor.tokenizer
    engine = AsyncEngine(model, tokenizer, cfg.engine, cfg.server.limits, device)
    max_context = cfg.engine.max_model_len or model.spec.max_position_embeddings
    info = _model_info(model_id, model, cfg, max_context, device, dtype)
    return Runtime(engine=engine, processor=processor, info=info, tokenizer=tokenizer, model=model)
