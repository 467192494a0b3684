#!/usr/bin/env python
"""ViT attention backends on real Qwen-VL shapes: µs per call per backend, and how close `auto` gets to the best.

    python benchmarks/bench_vit_backends.py --out results/vit_backends.json      (H200, after benchmarks/gpu_env.sh)

Per shape and backend (and auto): one untimed call (cuDNN graph build / kernel load; its wall time is reported as
first_call_ms), then LOOPS loops of --reps back-to-back calls timed with CUDA events (vit_backends.auto's
loop_times_us); `us_loop` is the best loop per call, `us_median_loop` the median loop (their gap shows the launch
jitter). `us` is device time per call: the best of LOOPS replays of a CUDA graph of calls (graph_times_us, what auto
decides by and how the vision towers run once an image size repeats); the eager best loop where a backend cannot
be captured. auto_ratio compares `us`. bf16, 16 heads.
Shapes: Qwen2.5-VL (patch 14, head_dim 80) window layers (64-patch windows) and full layers at image sides
448/1024/2048 and batches of 1/8/32 images of 560x560; Qwen3-VL (patch 16, head_dim 72) full layers at the same
sizes; the GPU.md shapes 4x1024 d80, 1x4096 d72, 2x2304 d64. One `auto` instance serves every shape, as in the
server; auto_ratio = auto / best backend (the target is <= 1.05).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: import from this checkout
    sys.path[0] = str(_HERE.parent)

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from vit_backends import create, usable  # noqa: E402
from vit_backends.shapes import qwen3_layers, qwen25_layers  # noqa: E402

HEADS = 16
DEVICE = "cuda"
BACKENDS = ("sdpa", "fa3", "flashinfer_cudnn")
LOOPS = 5  # timing loops per shape and backend; --reps calls per loop


def workloads() -> list[dict]:
    """Every benchmarked shape: name, head_dim and segment lengths."""
    shapes = []
    for label, sides in [(f"{s}px", [s]) for s in (448, 1024, 2048)] + \
                        [(f"{b}x560px", [560] * b) for b in (1, 8, 32)]:
        for layer, lengths in qwen25_layers(sides).items():
            shapes.append({"name": f"qwen2.5-vl {layer} {label}", "head_dim": 80, "lengths": lengths})
        shapes.append({"name": f"qwen3-vl full {label}", "head_dim": 72, "lengths": qwen3_layers(sides)["full"]})
    for count, tokens, dim in ((4, 1024, 80), (1, 4096, 72), (2, 2304, 64)):
        shapes.append({"name": f"gpu.md {count}x{tokens} d{dim}", "head_dim": dim, "lengths": [tokens] * count})
    return shapes


def make_inputs(lengths: list[int], head_dim: int) -> tuple:
    tokens = sum(lengths)
    q, k, v = (torch.randn(tokens, HEADS, head_dim, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, k, v, cu, max(lengths)


def time_backend(backend, args: tuple, reps: int) -> tuple[float, float, float, float | None]:
    """(first call wall ms, best-loop µs per call, median-loop µs per call over LOOPS loops of `reps` eager calls,
    best of LOOPS CUDA-graph replays: device µs per call, None when the backend cannot be captured)."""
    from vit_backends.auto import graph_times_us, loop_times_us

    torch.cuda.synchronize()
    start = time.perf_counter()
    backend(*args)
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - start) * 1e3
    samples = loop_times_us(backend, args, reps=LOOPS, inner=reps)
    try:
        graph = min(graph_times_us(backend, args, reps=LOOPS))
    except Exception as e:  # not capturable: its device time is not measured (auto then times it in loops too)
        print(f"  {getattr(backend, 'name', backend)}: no CUDA-graph timing ({type(e).__name__}: {e})"[:200])
        torch.cuda.synchronize()
        graph = None
    return first_ms, min(samples), statistics.median(samples), graph


def check_close(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference from the sdpa output (reported, so a fast but wrong backend is visible)."""
    return float((out.float() - ref.float()).abs().max())


def bench_shape(shape: dict, backends: dict, auto, reps: int) -> dict:
    args = make_inputs(shape["lengths"], shape["head_dim"])
    row = {"name": shape["name"], "heads": HEADS, "head_dim": shape["head_dim"], "tokens": args[0].shape[0],
           "segments": len(shape["lengths"]), "max_seqlen": args[4], "us": {}, "us_loop": {}, "us_median_loop": {},
           "first_call_ms": {}, "max_abs_diff_vs_sdpa": {}, "errors": {}}
    ref = backends["sdpa"](*args) if "sdpa" in backends else None
    for name, backend in backends.items():
        try:
            timed = time_backend(backend, args, reps)
            row["first_call_ms"][name], row["us_loop"][name], row["us_median_loop"][name], graph_us = timed
            row["us"][name] = graph_us if graph_us is not None else timed[1]
            if ref is not None:
                row["max_abs_diff_vs_sdpa"][name] = check_close(backend(*args), ref)
        except Exception as e:  # a backend that cannot run a shape is reported, not fatal
            row["errors"][name] = f"{type(e).__name__}: {e}"
    if row["us"]:
        row["best"] = min(row["us"], key=row["us"].get)
        first, loop, median, graph_us = time_backend(auto, args, reps)
        row["first_call_ms"]["auto"], row["us_loop"]["auto"], row["us_median_loop"]["auto"] = first, loop, median
        row["auto_us"] = graph_us if graph_us is not None else loop
        row["auto_choice"] = auto.choices().get(_bucket_text(args), "?")
        row["auto_ratio"] = row["auto_us"] / row["us"][row["best"]]
    return row


def _bucket_text(args: tuple) -> str:
    from vit_backends.auto import shape_bucket
    return str(shape_bucket(args[0], args[3], args[4]))


def versions() -> dict:
    found = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn_torch": torch.backends.cudnn.version()}
    for dist in ("triton", "flashinfer-python", "nvidia-cudnn-frontend", "fa3-fwd", "transformers"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    try:
        import cudnn
        found["cudnn_backend"] = cudnn.backend_version()
    except Exception as e:  # report, don't fail
        found["cudnn_backend"] = f"unavailable: {type(e).__name__}"
    return found


def print_row(row: dict) -> None:
    cells = " ".join(f"{n}={t:8.1f}" for n, t in row["us"].items())
    auto = f"auto={row['auto_us']:8.1f} ({row['auto_choice']}, x{row['auto_ratio']:.3f})" if "auto_us" in row else ""
    print(f"{row['name']:<34} T={row['tokens']:>6} S={row['segments']:>4} {cells} {auto} {row['errors'] or ''}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result path")
    parser.add_argument("--reps", type=int, default=20, help=f"back-to-back calls per timing loop ({LOOPS} loops)")
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    names = [n for n in opts.backends if n in usable()]
    backends = {n: create(n) for n in names}
    auto = create("auto")
    rows = []
    for shape in workloads():
        rows.append(bench_shape(shape, backends, auto, opts.reps))
        print_row(rows[-1])
    ratios = [r["auto_ratio"] for r in rows if "auto_ratio" in r]
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": torch.cuda.get_device_name(0),
              "versions": versions(), "dtype": "bfloat16", "reps": opts.reps, "loops": LOOPS, "backends": names,
              "skipped_backends": sorted(set(opts.backends) - set(names)), "auto_choices": auto.choices(),
              "auto_timings_us": auto.timings(), "auto_worst_ratio": max(ratios, default=None),
              "auto_within_5pct": all(r <= 1.05 for r in ratios), "shapes": rows}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=1))
    print(f"auto worst ratio {result['auto_worst_ratio']}, within 5 %: {result['auto_within_5pct']} -> {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
