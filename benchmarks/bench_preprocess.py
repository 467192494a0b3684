#!/usr/bin/env python
"""Image decode + preprocess of one image, in process: the CPU path (what the server runs with
--preprocess-device cpu: PIL decode, bicubic resize, bf16 patch layout in pinned memory) against the GPU path
(gpu_preprocess.GpuPreprocessor: nvJPEG / host decode, torch ops on the device, stream synchronised), a new image
each call, median of --repeats; and the GPU path's difference from the CPU path, in uint8 levels.

    python benchmarks/bench_preprocess.py --out $OUT/preprocess.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_service.demo.images import encode, make_image  # noqa: E402
from vlm_service.processor.gpu_preprocess import GpuPreprocessor  # noqa: E402
from vlm_service.processor.image import decode_image  # noqa: E402
from vlm_service.processor.vision import ImageConfig, preprocess_image  # noqa: E402
from vlm_service.processor.family_rules import demo_image_config

LIMIT = 40_000_000


def _photo_like(rng: np.random.Generator, side: int) -> np.ndarray:
    """Gradients, a texture, mild noise: closer to a photo's codec cost than the harness's uniform noise."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    img = np.stack([255 * xx / side, 255 * yy / side, 128 + 100 * np.sin(xx / 7 + yy / 11)], -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _images(kind: str, fmt: str, side: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    if kind == "noise":  # what benchmarks/ttft.py sends
        return [make_image(rng, side, side, "noise", fmt).data for _ in range(n)]
    return [encode(Image.fromarray(_photo_like(rng, side)), fmt) for _ in range(n)]


def _cpu(data: bytes, cfg: ImageConfig, dtype: torch.dtype):
    return preprocess_image(decode_image(data, "", LIMIT, "f"), cfg, dtype, pin_memory=torch.cuda.is_available())


def _median_ms(fn, items) -> float:
    times = []
    for data in items:
        t0 = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _levels(got: torch.Tensor, want: torch.Tensor, cfg: ImageConfig) -> dict:
    std = torch.tensor(cfg.image_std).repeat_interleave(got.shape[1] // len(cfg.image_std))
    d = ((got.float().cpu() - want.float()).abs() * std * 255).numpy()
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": float(d.max()),
            "frac_over_half_level": float((d > 0.5).mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda", help="cpu runs the same code without a GPU (a smoke test)")
    args = p.parse_args()
    results = []
    for arch in ("qwen3_vl", "qwen2_5_vl"):
        cfg = ImageConfig.from_dict(demo_image_config(arch, hub_limits=True))
        gpu = GpuPreprocessor(cfg, torch.device(args.device), torch.bfloat16)
        gpu32 = GpuPreprocessor(cfg, torch.device(args.device), torch.float32, warm_up=False)
        for kind in ("noise", "photo"):
            for fmt in ("jpeg", "png"):
                items = _images(kind, fmt, args.side, args.repeats + 1)
                _cpu(items[0], cfg, torch.bfloat16)  # first touch of the size: not measured
                gpu(items[0], "", LIMIT, "f")
                row = {"arch": arch, "content": kind, "format": fmt, "side": args.side,
                       "bytes": len(items[1]), "decoder": "nvJPEG" if gpu.jpeg is not None else "host",
                       "cpu_ms": _median_ms(lambda d: _cpu(d, cfg, torch.bfloat16), items[1:]),
                       "gpu_ms": _median_ms(lambda d: gpu(d, "", LIMIT, "f"), items[1:]),
                       "levels_vs_cpu": _levels(gpu32(items[1], "", LIMIT, "f")[0],
                                                _cpu(items[1], cfg, torch.float32)[0], cfg),
                       "paths": dict(gpu.images)}
                print(json.dumps(row), flush=True)
                results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    args.out.write_text(json.dumps({"device": device, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
