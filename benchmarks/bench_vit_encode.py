#!/usr/bin/env python
"""Whole vision-tower encode per ViT attention backend, full-size presets, one 1024x1024 image (GPU host).

    python benchmarks/bench_vit_encode.py --out vit_encode.json

Builds each `random:` preset once (bf16), preprocesses one 1024² noise image with the preset's real pixel limits,
then for each backend swaps the attention backend of every vision block and times model.encode_images with CUDA
events (median of --reps after 3 warm-up calls, which include cuDNN graph builds and auto's measurements): "ms" with
the ViT CUDA graphs switched off (eager), "graph_ms" with them on (the 3 warm-ups are the eager first sight, the
capture and a replay, so every timed call is a replay; a key that fell back to eager is reported as an error).
Transformers 5.17 on the same host: 152.6 ms (Qwen2.5-VL-7B) and 25.1 ms (Qwen3-VL-8B), from ../shared/GPU.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import tempfile

import torch

import vit_backends
from vit_backends.base import ViTAttention

TRANSFORMERS_MS = {"qwen2_5_vl_7b": 152.6, "qwen3_vl_8b": 25.1}


def noise_png(size: int) -> bytes:
    from PIL import Image

    arr = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.numpy()).save(buf, format="PNG")
    return buf.getvalue()


def set_backend(model: torch.nn.Module, backend: ViTAttention) -> int:
    swapped = 0
    for module in model.modules():  # only vision blocks hold a ViTAttention backend
        if isinstance(getattr(module, "backend", None), ViTAttention):
            module.backend = backend
            swapped += 1
    return swapped


def time_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_graph_ms(model, pixels: torch.Tensor, grid: torch.Tensor, reps: int) -> float | str:
    """time_ms of encode_images with the ViT CUDA graphs on; an error string when the calls were not replays."""
    before = model.vision_graphs.counts()["replays"]
    ms = time_ms(lambda: model.encode_images(pixels, grid), reps)
    if model.vision_graphs.counts()["replays"] - before < reps:
        return f"error: no graph replay (capture failed, eager fallback: {model.vision_graphs.counts()})"
    return ms


def bench_preset(name: str, size: int, reps: int, state_dir: str) -> dict:
    from vlm_service.demo import presets
    from vlm_service.processor.processor import Processor
    from vlm_service.types import ChatMessage, ImageInput

    model = presets.build_random_model(name, torch.bfloat16, "cuda", vit_backends.create("sdpa"))
    processor = Processor.from_pretrained(presets.ensure_preset_dir(state_dir, name))
    img = processor.process((ChatMessage("user", (ImageInput(noise_png(size), "image/png"), "x")),)).images[0]
    pixels = img.pixel_values.to("cuda", torch.bfloat16)
    grid = torch.tensor([img.grid_thw], device="cuda")
    row = {"preset": name, "image": f"{size}x{size}", "patches": int(pixels.shape[0]), "image_tokens": img.num_tokens,
           "transformers_ms": TRANSFORMERS_MS.get(name), "ms": {}, "graph_ms": {}}
    with torch.inference_mode():
        for backend in ("sdpa", "fa3", "flashinfer_cudnn", "auto"):
            try:
                set_backend(model, vit_backends.create(backend))
                model.vision_graphs.enabled = False
                row["ms"][backend] = time_ms(lambda: model.encode_images(pixels, grid), reps)
                model.vision_graphs.enabled = True
                row["graph_ms"][backend] = time_graph_ms(model, pixels, grid, reps)
            except Exception as exc:  # a backend that cannot run here is reported, not fatal
                row["graph_ms" if backend in row["ms"] else "ms"][backend] = \
                    f"error: {exc.__class__.__name__}: {exc}"[:300]
    del model
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", nargs="+", default=["qwen2_5_vl_7b", "qwen3_vl_8b"])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    state_dir = tempfile.mkdtemp()
    rows = [bench_preset(p, args.size, args.reps, state_dir) for p in args.presets]
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "dtype": "bfloat16", "results": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for r in rows:
        for column in ("ms", "graph_ms"):
            print(r["preset"], r["image_tokens"], "tokens", column,
                  {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r[column].items()})


if __name__ == "__main__":
    main()
