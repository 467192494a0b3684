"""Peer mode: the same dataset through transformers' `generate`, in-process, one request at a time.

TTFT is stamped by a streamer at the first generated token (image decode and preprocessing included, as in the
server); ITLs are the gaps between later tokens. The result is a list of RequestResult, so every metric, table and
plot of the gRPC runs applies unchanged and a report can show server / transformers ratios.

The model is a HF-format directory. Without weight files there (config.json, tokenizer and preprocessor config only,
as written for `random:` presets), the model is built from its config with random weights.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Sequence

from vlm_service.bench.dataset import BenchRequest
from vlm_service.bench.records import RequestResult


class _Stamps:
    """A transformers streamer that records when each generated token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens = 0
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.tokens += int(value.numel())

    def end(self) -> None:
        pass


def resolve_model_dir(spec: str, state_dir: Path | None = None) -> Path:
    """A directory as given; "demo" / "demo:<arch>" from the demo builder (the server's own checkpoint); anything
    else is refused with a message saying what is needed."""
    if spec == "demo" or spec.startswith("demo:"):
        from vlm_service.config import default_state_dir
        from vlm_service.demo.checkpoint import ensure_demo_model

        arch = spec.split(":", 1)[1] if ":" in spec else "qwen3_vl"
        return Path(ensure_demo_model(Path(state_dir or default_state_dir()) / "models", arch))
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(f"--peer-model {spec!r}: need a HF-format directory with config.json, tokenizer and "
                     "preprocessor config (for random: presets, write the preset's config there without weights)")


def load_peer(model_dir: Path, device: str, dtype: str):
    """(model, processor) from model_dir; random weights when the directory has no *.safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                   "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if any(model_dir.glob("*.safetensors")):
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch_dtype)
    else:
        torch.manual_seed(0)
        with torch.device(device):  # initialise full-size random weights where they will run, not on the CPU
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch_dtype)
    return model.to(device).eval(), _load_processor(model_dir)


def _load_processor(model_dir: Path):
    """AutoProcessor, except without torchvision (CPU here, and the GPU host): the PIL image processor, and an
    unused video processor let past transformers' class check (BaseVideoProcessor is a dummy without torchvision)."""
    import importlib
    import importlib.util

    import transformers
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer, ProcessorMixin

    from vlm_service.models import registry
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if importlib.util.find_spec("torchvision") is not None:
        processor = AutoProcessor.from_pretrained(model_dir)
        if getattr(processor, "chat_template", None) is None:  # a checkpoint that keeps it with the tokenizer only
            processor.chat_template = processor.tokenizer.chat_template
        return processor
    family = registry.entry(AutoConfig.from_pretrained(model_dir).architectures[0]).family
    proc_cls = getattr(transformers, family.processor_class)
    video_module, _, video_name = family.hf_video_processor.partition(":")
    video_cls = getattr(importlib.import_module(video_module), video_name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: type(arg)
    try:
        return proc_cls(image_processor=Qwen2VLImageProcessorPil.from_pretrained(model_dir), tokenizer=tokenizer,
                        video_processor=video_cls(), chat_template=tokenizer.chat_template)
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


def run_one(model, processor, req: BenchRequest, index: int, t0: float) -> RequestResult:
    """One request through generate with min_new_tokens = max_new_tokens, greedy."""
    import torch
    from PIL import Image

    res = RequestResult(index, f"peer-{index}", num_images=len(req.images), pixels=req.pixels)
    start = time.perf_counter()
    res.send_s = start - t0
    try:
        images = [Image.open(io.BytesIO(im.data)).convert("RGB") for im in req.images]
        videos, metadata = _load_videos(processor, getattr(req, "videos", ()))
        content = ([{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
                   + [{"type": "text", "text": req.prompt}])
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        video_kw = dict(videos=videos, video_metadata=metadata, do_sample_frames=False) if videos else {}
        inputs = processor(text=[text], images=images or None, return_tensors="pt", **video_kw).to(model.device)
        stamps = _Stamps()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=req.max_tokens, min_new_tokens=req.min_tokens,
                           do_sample=False, streamer=stamps)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
    except Exception as e:  # noqa: BLE001 - counted, like a server error
        res.status, res.error = f"PEER_{type(e).__name__}", str(e)[:500]
        return res
    _fill(res, stamps, start, end, int(inputs["input_ids"].shape[1]))
    return res


def _load_videos(processor, items) -> tuple[list, list]:
    """transformers' own PyAV reader and its video processor's frame sampling (at the request's fps, else 2):
    (frames [n, H, W, 3] per video, their VideoMetadata). Needs torchvision (the video processor)."""
    import functools
    import tempfile

    from transformers.video_utils import load_video

    videos, metadata = [], []
    for item in items:
        with tempfile.NamedTemporaryFile(suffix=".mp4" if "mp4" in item.mime_type else ".video") as f:
            f.write(item.data)
            f.flush()
            sample = functools.partial(processor.video_processor.sample_frames, fps=item.sample_fps or 2.0)
            frames, meta = load_video(f.name, backend="pyav", sample_indices_fn=sample)
        videos.append(frames)
        metadata.append(meta)
    return videos, metadata


def _fill(res: RequestResult, stamps: _Stamps, start: float, end: float, prompt_tokens: int) -> None:
    if not stamps.times:
        res.status, res.error = "EMPTY_OUTPUT", "generate produced no token"
        return
    res.ok, res.finish_reason = True, "LENGTH"
    res.ttft_ms = (stamps.times[0] - start) * 1e3
    res.itl_ms = [(b - a) * 1e3 for a, b in zip(stamps.times, stamps.times[1:])]
    res.e2e_ms = (end - start) * 1e3
    res.output_tokens, res.prompt_tokens = stamps.tokens, prompt_tokens


def run_peer(model_spec: str, requests: Sequence[BenchRequest], warmup: Sequence[BenchRequest] = (),
             device: str = "auto", dtype: str = "auto", state_dir: Path | None = None
             ) -> tuple[list[RequestResult], float]:
    """Warm up, then run every request one after another; returns (results, wall seconds)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_peer(resolve_model_dir(model_spec, state_dir), device, dtype)
    for i, req in enumerate(warmup):
        run_one(model, processor, req, -1 - i, time.perf_counter())
    t0 = time.perf_counter()
    results = [run_one(model, processor, req, i, t0) for i, req in enumerate(requests)]
    return results, time.perf_counter() - t0
