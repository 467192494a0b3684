"""Load what the server serves: device/dtype resolution, model, processor, tokenizer and the async engine."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from vlm_service.config import Config

log = logging.getLogger(__name__)

ACCEPTED_MIME_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class VideoInfo:
    """The video limits GetModelInfo reports (config.LimitsConfig's max_video_* fields)."""

    max_videos: int
    max_bytes: int
    max_frames: int
    max_duration_s: float
    max_visual_tokens: int
    max_fps: float
    max_frame_pixels: int
    mime_types: tuple[str, ...] = ("video/mp4", "video/webm", "video/quicktime")

    @classmethod
    def from_limits(cls, limits) -> "VideoInfo":
        return cls(max_videos=limits.max_videos_per_request, max_bytes=limits.max_video_bytes,
                   max_frames=limits.max_video_frames, max_duration_s=limits.max_video_duration_s,
                   max_visual_tokens=limits.max_visual_tokens, max_fps=limits.max_video_fps,
                   max_frame_pixels=limits.max_video_frame_pixels)


def video_processor_kwargs(limits) -> dict:
    """The Processor keyword arguments of the video limits."""
    from vlm_service.processor.video import VideoLimits

    return dict(video_limits=VideoLimits(
        max_bytes=limits.max_video_bytes, max_frames=limits.max_video_frames,
        max_duration_s=limits.max_video_duration_s, max_frame_pixels=limits.max_video_frame_pixels,
        max_fps=limits.max_video_fps, decode_timeout_s=limits.video_decode_timeout_s),
        max_videos=limits.max_videos_per_request, max_visual_tokens=limits.max_visual_tokens)


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
    vit_backend_choices: Mapping[str, str] = field(default_factory=dict)  # auto's picks so far, per shape bucket
    video: VideoInfo | None = None


@dataclass
class Runtime:
    """Everything the servicer needs: engine (reserve/release/generate/abort/stats), processor, model info."""

    engine: Any
    processor: Any
    info: ModelInfo
    tokenizer: Any = None
    model: Any = None
    extras: dict = field(default_factory=dict)
    vit_backend: Any = None  # the ViT attention backend object (auto reports its per-shape choices)

    def model_info(self) -> ModelInfo:
        """`info`, with auto's choices as of now."""
        choices = getattr(self.vit_backend, "choices", None)
        return replace(self.info, vit_backend_choices=dict(choices())) if callable(choices) else self.info

    def start(self) -> None:
        self.engine.start()

    async def stop(self, drain: bool) -> None:
        await self.engine.stop(drain)
        parallel = self.extras.get("parallel")
        if parallel is not None:  # tensor-parallel workers stop after the engine drained (reaping them blocks)
            await asyncio.to_thread(parallel.shutdown)


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


def resolve_model_path(cfg: Config) -> tuple[str, str | Path, Path]:
    """(model id, what load_model takes, tokenizer/processor dir) for demo / demo:<arch> / random:<preset> / a dir."""
    name, state = cfg.model.model, Path(cfg.server.state_dir)
    if name == "demo" or name.startswith("demo:"):
        from vlm_service.demo.checkpoint import ensure_demo_model

        arch = name.split(":", 1)[1] if ":" in name else "qwen3_vl"
        path = Path(ensure_demo_model(state, arch))
        return name, path, path
    if name.startswith("random:"):
        from vlm_service.demo import presets

        return name, name, Path(presets.ensure_preset_dir(state, name))
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(f"--model {name!r}: not a directory, 'demo', 'demo:qwen2_5_vl' or 'random:<preset>'")
    return str(path), path, path


def _model_info(model_id: str, model, cfg: Config, max_context: int, device, dtype, backend) -> ModelInfo:
    return ModelInfo(model_id=model_id, architecture=model.spec.architecture, max_context=max_context,
                     max_images=cfg.server.limits.max_images_per_request,
                     max_pixels=cfg.server.limits.max_image_pixels, vit_attention_backend=backend,
                     device=str(device), dtype=str(dtype).removeprefix("torch."),
                     video=VideoInfo.from_limits(cfg.server.limits))


def processor_limits(limits) -> dict:
    """The Processor keyword arguments of the limits: template trust and the image cost limits."""
    from vlm_service.processor.budget import DecodeBudget

    return dict(trust_client_special_tokens=limits.trust_client_special_tokens,
                max_request_pixels=limits.max_request_pixels,
                decode_budget=DecodeBudget(limits.max_decode_memory_bytes, limits.max_decode_wait_s))


def load_runtime(cfg: Config) -> Runtime:
    """Resolve device and dtype, load model + processor + tokenizer and build the (not yet started) engine."""
    from vlm_service.engine import AsyncEngine
    from vlm_service.processor.gpu_preprocess import resolve_preprocess_device, resolve_video_preprocess_device
    from vlm_service.processor.processor import Processor

    import vit_backends
    from vlm_service.models.loader import load_model

    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    model_id, weights, processor_dir = resolve_model_path(cfg)
    log.info("loading %s on %s (%s)", model_id, device, dtype)
    vit = vit_backends.create(cfg.model.vit_attention_backend)
    parallel = _start_parallel(cfg, device)
    tp = parallel.tp if parallel is not None else None
    if parallel is not None:
        device = parallel.device
    model = load_model(weights, dtype=dtype, device=device, vit_attention=vit, **({"tp": tp} if tp else {}))
    # on CUDA the pixels leave the preprocessing pool in the model dtype and pinned: the engine thread's copy to
    # the device is then asynchronous and half the bytes (a 1024² image was 25 MB of pageable float32)
    cuda = device.type == "cuda"
    # --preprocess-device: on CUDA the pixels are decoded (JPEG) and laid out on the device itself (gpu_preprocess)
    preprocess_device = resolve_preprocess_device(cfg.model.preprocess_device, device)
    # videos: auto on CUDA = the device (resize / normalise / patch layout as transformers' GPU video processor)
    video_device = resolve_video_preprocess_device(cfg.model.preprocess_device, device)
    processor = Processor.from_pretrained(processor_dir, max_pixels_limit=cfg.server.limits.max_image_pixels,
                                          max_images=cfg.server.limits.max_images_per_request,
                                          chat_template=cfg.model.chat_template or None,
                                          pixel_dtype=dtype if cuda else torch.float32, pin_pixels=cuda,
                                          preprocess_device=preprocess_device, video_preprocess_device=video_device,
                                          **processor_limits(cfg.server.limits),
                                          **video_processor_kwargs(cfg.server.limits))
    if parallel is None:
        engine = AsyncEngine(model, processor.tokenizer, cfg.engine, cfg.server.limits, device)
    else:
        engine = AsyncEngine(model, processor.tokenizer, parallel.engine_config(model), cfg.server.limits, device,
                             make_runner=parallel.make_runner)
    model_id = cfg.model.served_model_name or model_id  # what GetModelInfo, /v1/models and responses report
    info = _model_info(model_id, model, cfg, engine.max_model_len, device, dtype, getattr(vit, "name", ""))
    return Runtime(engine=engine, processor=processor, info=info, tokenizer=processor.tokenizer, model=model,
                   vit_backend=vit, extras={"parallel": parallel} if parallel is not None else {})


def _start_parallel(cfg: Config, device: torch.device):
    """Rank 0's ParallelContext (workers spawned or joined) when --tensor-parallel-size > 1, else None."""
    if cfg.parallel.tensor_parallel_size <= 1:
        return None
    from vlm_service.engine.parallel.launch import ParallelContext

    return ParallelContext(cfg, device)
