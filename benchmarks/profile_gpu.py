#!/usr/bin/env python
"""Where the time goes on the GPU host: host vs device time of the ViT encode, decode steps and a 1024² prefill.

    python benchmarks/profile_gpu.py --preset qwen2_5_vl_7b --out profile_qwen2_5_vl_7b.json

For each phase it runs torch.profiler (CPU + CUDA activity) over a few repetitions and reports the wall time, the
GPU busy time (union of kernel intervals), the number of kernels launched, and the top kernels and CPU ops. Wall far
above GPU busy means the phase is bound by the host (Python, launches, syncs), not by the GPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
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


def prefill_host(engine, processor, size: int, reps: int, trace: Path | None) -> dict:
    """Is a single request's prefill bound by the host? Per request (a new image each, no profiler): the wall time
    from add() to the first token; the host time to issue ModelRunner.run (no sync) and, synced right after it,
    how much GPU work was still queued; the host time of the vision encode's issue. Then one request under
    torch.profiler: the CPU-side waits for the device (synchronize / blocking copies) by name, and a Chrome trace."""
    from vlm_service.types import SamplingParams

    # a new image every request: 2 warm-ups, reps plain, reps synced, 1 profiled
    inputs = [bench_decode.prompt(processor, 77, bench_decode.png(200 + size + i, size)) for i in range(2 * reps + 3)]
    runner, acc = engine.runner, {}
    orig_run, orig_encode = runner.run, runner._encode

    def run(*a, **k):
        t0 = time.perf_counter()
        out = orig_run(*a, **k)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        acc.setdefault("run_issue_ms", []).append((t1 - t0) * 1e3)
        acc.setdefault("run_gpu_left_ms", []).append((time.perf_counter() - t1) * 1e3)
        return out

    def encode(*a, **k):
        t0 = time.perf_counter()
        out = orig_encode(*a, **k)
        acc.setdefault("encode_issue_ms", []).append((time.perf_counter() - t0) * 1e3)
        return out

    def request(i: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.add(f"ph{size}-{i}", inputs[i], SamplingParams(max_tokens=1))
        while engine.has_work():
            engine.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    for i in range(2):
        request(i)
    walls = [request(2 + i) for i in range(reps)]  # plain: nothing wrapped
    runner.run, runner._encode = run, encode
    try:
        for i in range(reps):
            request(2 + reps + i)
    finally:
        runner.run, runner._encode = orig_run, orig_encode
    med = {k: statistics.median(v) for k, v in acc.items()}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        request(2 * reps + 2)
    waits = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU and re.search(r"Synchronize|Memcpy|item|tolist|nonzero",
                                                                          e.name):
            w = waits.setdefault(e.name, [0, 0.0])
            w[0] += 1
            w[1] += e.cpu_time_total / 1e3
    if trace is not None:
        raw = trace.with_suffix("")
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as f, gzip.open(trace, "wb") as g:
            g.write(f.read())
        raw.unlink()
    busy, kernels = busy_ms(prof.events())
    return {"size": size, "prompt_tokens": len(inputs[0].input_ids), "reps": reps,
            "wall_ms_median": statistics.median(walls), "wall_ms": walls, "synced_medians_ms": med,
            "synced_ms": acc, "profiled_gpu_busy_ms": busy, "profiled_kernels": kernels,
            "profiled_waits": {k: {"calls": c, "ms": round(ms, 3)} for k, (c, ms) in
                               sorted(waits.items(), key=lambda kv: -kv[1][1])[:15]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2_5_vl_7b")
    ap.add_argument("--vit", default="fa3")
    ap.add_argument("--out", required=True)
    ap.add_argument("--phases", default="vit,prefill,decode",
                    help="comma-separated subset of vit,prefill,decode,prefill_host")
    ap.add_argument("--host-sizes", type=int, nargs="+", default=[512, 1024], help="image sizes for prefill_host")
    ap.add_argument("--trace-dir", default="", help="prefill_host: write a gzipped Chrome trace per size here")
    ap.add_argument("--prefill-graph-max-tokens", type=int, default=1024,
                    help="EngineConfig.prefill_graph_max_tokens (0 = eager prefill steps; an A/B knob)")
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
        cfg = EngineConfig(max_num_seqs=64, max_batched_tokens=8192, max_model_len=8192, enable_prefix_cache=False,
                           prefill_graph_max_tokens=args.prefill_graph_max_tokens)
        result["prefill_graph_max_tokens"] = args.prefill_graph_max_tokens
        engine = LLMEngine(model, processor.tokenizer, cfg, device)
        if "prefill" in phases:
            result["prefill_1024"] = prefill_profile(engine, processor, 1024)
        if "prefill_host" in phases:
            tdir = Path(args.trace_dir) if args.trace_dir else None
            result["prefill_host"] = [prefill_host(engine, processor, n, 8, tdir / f"trace_prefill_{n}.json.gz"
                                                   if tdir else None) for n in args.host_sizes]
        if "decode" in phases:
            result["decode"] = [decode_profile(engine, processor, b) for b in (1, 64)]
    Path(args.out).write_text(json.dumps(result, indent=2))
    brief = {}
    if "vit_encode_1024" in result:
        brief["vit"] = {k: result["vit_encode_1024"][k] for k in ("wall_ms", "gpu_busy_ms", "kernels_per_rep")}
    if "prefill_1024" in result:
        brief["prefill"] = {k: result["prefill_1024"]["profile"][k] for k in ("wall_ms", "gpu_busy_ms")}
    for row in result.get("prefill_host", []):
        brief[f"prefill_host_{row['size']}"] = {k: row[k] for k in ("prompt_tokens", "wall_ms_median",
                                                                   "synced_medians_ms", "profiled_gpu_busy_ms")}
    if "decode" in result:
        brief["decode"] = [{"batch": d["batch"], **d["phases"], "gpu_busy_ms": d["profile"]["gpu_busy_ms"],
                            "prof_wall_ms": d["profile"]["wall_ms"]} for d in result["decode"]]
    print(json.dumps(brief, indent=1))


if __name__ == "__main__":
    main()
