#!/usr/bin/env python
"""Where a graph-captured decode step's GPU time goes, per kernel name (run on the GPU host):

    python benchmarks/profile_decode.py --model random:qwen3_vl_30b_a3b --batch 1 8 --out $OUT/profile_decode.json

Builds the model (random weights, bf16; --layers N keeps the first N text layers, faster to build), an LLMEngine
with decode CUDA graphs for batch sizes up to max(--batch), prefills --batch requests, then runs --steps decode
steps under torch.profiler (CUDA activity: the kernels inside each graph replay are recorded one by one). Per batch
it writes: the step's wall ms (host included), the GPU busy ms per step (union of kernel intervals), kernels per
step, and every kernel name with its total µs per step, calls per step and share of the busy time, sorted by time;
with per_layer_us = total / layers for the names that run once per layer. Nothing is timed during warm-up.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts
import bench_decode  # noqa: E402
from kernel_profile import union_us  # noqa: E402


def load(name: str, layers: int | None, vit: str, state_dir: Path, device: torch.device):
    import vit_backends
    from vlm_service.demo import presets
    from vlm_service.processor.processor import Processor

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = presets.build_random_model(name, dtype, device, vit_backends.create(vit), num_layers=layers)
    processor = Processor.from_pretrained(presets.ensure_preset_dir(state_dir, name), pixel_dtype=dtype,
                                          pin_pixels=cuda)
    return model, processor


def kernel_table(events, steps: int, layers: int) -> tuple[list[dict], float, int]:
    """CUDA kernel events -> rows sorted by total time, the busy ms per step, kernels per step."""
    total, calls, spans = collections.Counter(), collections.Counter(), []
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CUDA or e.time_range.end <= e.time_range.start:
            continue
        us = e.time_range.end - e.time_range.start
        total[e.name] += us
        calls[e.name] += 1
        spans.append((e.time_range.start, e.time_range.end))
    busy = union_us(spans)
    rows = []
    for name, us in total.most_common():
        per_step = us / steps
        row = {"name": name[:160], "us_per_step": round(per_step, 2), "calls_per_step": calls[name] / steps,
               "pct_busy": round(100 * us / busy, 2) if busy else 0.0}
        if calls[name] / steps >= layers:  # once (or more) per layer: the per-layer cost
            row["per_layer_us"] = round(per_step / layers, 3)
        rows.append(row)
    return rows, busy / steps / 1e3, len(spans) // steps


def profile_batch(engine, processor, batch: int, steps: int, layers: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from vlm_service.types import SamplingParams

    sp = SamplingParams(max_tokens=steps + 16, ignore_eos=True)
    for i in range(batch):
        engine.add(f"prof{batch}-{i}", bench_decode.prompt(processor, 40 + i), sp)
    while engine.scheduler.waiting or any(not s.output_ids for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):  # untimed decode steps: every graph replayed once, plans warm
        engine.step()
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()
    cuda = torch.cuda.is_available() and engine.runner.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    rows, busy_ms, kernels = kernel_table(prof.events(), steps, layers)
    for rid in list(engine.requests):
        engine.abort(rid)
    return {"batch": batch, "steps": steps, "wall_ms_per_step": round(wall_ms, 3),
            "gpu_busy_ms_per_step": round(busy_ms, 3), "kernels_per_step": kernels,
            "kernels_per_layer": round(kernels / layers, 2), "kernels": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:qwen3_vl_30b_a3b")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N text decoder layers")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vit", default="sdpa")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="profile eager steps (launch gaps included)")
    ap.add_argument("--out", required=True, help="path of the JSON results file")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only smoke-tests the script (no kernel table)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from vlm_service.config import EngineConfig
    from vlm_service.engine.engine import LLMEngine

    with tempfile.TemporaryDirectory() as state:
        t0 = time.perf_counter()
        model, processor = load(args.model, args.layers, args.vit, Path(state), device)
        build_s = time.perf_counter() - t0
        cfg = EngineConfig(max_num_seqs=max(args.batch), max_batched_tokens=8192, max_model_len=4096,
                           enable_prefix_cache=False, cuda_graphs=not args.no_cuda_graphs)
        engine = LLMEngine(model, processor.tokenizer, cfg, device)
        layers = model.spec.num_layers
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        result = {"model": args.model, "layers": layers, "gpu": gpu,
                  "torch": torch.__version__, "build_s": round(build_s, 1),
                  "cuda_graphs": engine.runner.graphs is not None,
                  "results": [profile_batch(engine, processor, b, args.steps, layers) for b in args.batch]}
    try:
        from kernels import moe_configs
        result["moe_configs"] = moe_configs()
    except Exception as e:  # noqa: BLE001 - a report extra, never the reason the profile is lost
        result["moe_configs"] = f"unavailable: {e}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in result["results"]:
        print(json.dumps({k: v for k, v in r.items() if k != "kernels"}))
        for row in r["kernels"][:15]:
            print("   ", json.dumps(row))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
