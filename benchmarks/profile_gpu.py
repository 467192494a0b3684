#!/usr/bin/env python
"""Where the time goes on the GPU host: host vs device time of the ViT encode, decode steps and a 1024² prefill.

    python benchmarks/profile_gpu.py --preset qwen2_5_vl_7b --out profile_qwen2_5_vl_7b.json

For each phase it runs torch.profiler (CPU + CUDA activity) over a few repetitions and reports the wall time, the
GPU busy time (union of kernel intervals), the number of kernels launched, and the top kernels and CPU ops. Wall far
above GPU busy means the phase is bound by the host (Python, launches, syncs), not by the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts
import bench_decode  # noqa: E402
from kernel_profile import union_us  # noqa: E402


def busy_ms(events) -> tuple[float, int]:
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    return union_us(spans) / 1e3, len(spans)


def profiled(fn, reps: int, top: int = 12) -> dict:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3 / reps
    busy, kernels = busy_ms(prof.events())
    avgs = prof.key_averages()
    gpu_top = sorted(avgs, key=lambda a: a.self_device_time_total, reverse=True)[:top]
    cpu_top = sorted(avgs, key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
    device_ops = [a for a in avgs if a.device_type == torch.autograd.DeviceType.CUDA]
    kernel_top = sorted(device_ops, key=lambda a: a.self_device_time_total, reverse=True)[:2 * top]
    return {
        "reps": reps, "wall_ms": wall, "gpu_busy_ms": busy / reps, "kernels_per_rep": kernels / reps,
        "top_gpu": [{"name": a.key[:90], "calls": a.count // reps, "ms": a.self_device_time_total / 1e3 / reps}
                    for a in gpu_top],
        "top_kernels": [{"name": a.key[:120], "calls": a.count // reps, "ms": a.self_device_time_total / 1e3 / reps}
                        for a in kernel_top],
        "top_cpu": [{"name": a.key[:90], "calls": a.count // reps, "ms": a.self_cpu_time_total / 1e3 / reps}
                    for a in cpu_top],
    }


def phase_times(engine, steps: int) -> dict:
    """Mean host ms of schedule / runner.run (synced) / postprocess per engine step."""
    acc = {"schedule": 0.0, "run_synced": 0.0, "postprocess": 0.0}
    orig = (engine.scheduler.schedule, engine.runner.run, engine._postprocess)

    def timed(name, fn, sync=False):
        def wrapper(*a, **k):
            t = time.perf_counter()
            r = fn(*a, **k)
            if sync:
                torch.cuda.synchronize()
            acc[name] += time.perf_counter() - t
            return r
        return wrapper

    engine.scheduler.schedule = timed("schedule", orig[0])
    engine.runner.run = timed("run_synced", orig[1], sync=True)
    engine._postprocess = timed("postprocess", orig[2])
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    engine.scheduler.schedule, engine.runner.run, engine._postprocess = orig
    out = {k: v * 1e3 / steps for k, v in acc.items()}
    out["step_ms"] = total * 1e3 / steps
    return out


def decode_profile(engine, processor, batch: int) -> dict:
    from vlm_service.types import SamplingParams

    sp = SamplingParams(max_tokens=400, ignore_eos=True)
    for i in range(batch):
        engine.add(f"p{batch}-{i}", bench_decode.prompt(processor, 60 + i), sp)
    while engine.scheduler.waiting or any(not s.output_ids for s in engine.scheduler.running):
        engine.step()
    row = {"batch": batch, "phases": phase_times(engine, 20), "profile": profiled(engine.step, 10)}
    for rid in list(engine.requests):
        engine.abort(rid)
    return row


def prefill_profile(engine, processor, size: int) -> dict:
    from vlm_service.types import SamplingParams

    # a new image each call (2 warm-ups + 3 profiled), so the vision cache never hits
    inputs = [bench_decode.prompt(processor, 77, bench_decode.png(100 + i, size)) for i in range(5)]
    n = iter(range(5))

    def one():
        i = next(n)
        engine.add(f"pf{i}", inputs[i], SamplingParams(max_tokens=1))
        while engine.has_work():
            engine.step()

    return {"prompt_tokens": len(inputs[0].input_ids), "profile": profiled(one, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2_5_vl_7b")
    ap.add_argument("--vit", default="fa3")
    ap.add_argument("--out", required=True)
    ap.add_argument("--phases", default="vit,prefill,decode", help="comma-separated subset of vit,prefill,decode")
    args = ap.parse_args()
    from vlm_service.config import EngineConfig
    from vlm_service.engine.engine import LLMEngine

    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as state:
        model, processor = bench_decode.load(f"random:{args.preset}", device, args.vit, Path(state))
        inp = bench_decode.prompt(processor, 1, bench_decode.png(3, 1024))
        pixels = torch.cat([i.pixel_values for i in inp.visuals]).to(device, torch.bfloat16)
        grid = torch.tensor([i.grid_thw for i in inp.visuals], device=device)
        result = {"preset": args.preset, "vit": args.vit, "gpu": torch.cuda.get_device_name(0),
                  "torch": torch.__version__}
        phases = set(args.phases.split(","))
        if "vit" in phases:
            with torch.inference_mode():
                result["vit_encode_1024"] = profiled(lambda: model.encode_images(pixels, grid), 5)
        cfg = EngineConfig(max_num_seqs=64, max_batched_tokens=8192, max_model_len=8192, enable_prefix_cache=False)
        engine = LLMEngine(model, processor.tokenizer, cfg, device)
        if "prefill" in phases:
            result["prefill_1024"] = prefill_profile(engine, processor, 1024)
        if "decode" in phases:
            result["decode"] = [decode_profile(engine, processor, b) for b in (1, 64)]
    Path(args.out).write_text(json.dumps(result, indent=2))
    brief = {}
    if "vit_encode_1024" in result:
        brief["vit"] = {k: result["vit_encode_1024"][k] for k in ("wall_ms", "gpu_busy_ms", "kernels_per_rep")}
    if "prefill_1024" in result:
        brief["prefill"] = {k: result["prefill_1024"]["profile"][k] for k in ("wall_ms", "gpu_busy_ms")}
    if "decode" in result:
        brief["decode"] = [{"batch": d["batch"], **d["phases"], "gpu_busy_ms": d["profile"]["gpu_busy_ms"],
                            "prof_wall_ms": d["profile"]["wall_ms"]} for d in result["decode"]]
    print(json.dumps(brief, indent=1))


if __name__ == "__main__":
    main()
