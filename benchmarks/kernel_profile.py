"""Per-kernel device time of a GPU workload under torch.profiler: the "where does the time go" table.

    table = kernel_table(fn, reps=5)   # fn launches the work once (eager or a CUDA-graph replay)

Kernels launched by a CUDA-graph replay have no CPU op of their own (they correlate with cudaGraphLaunch), so the
table is built from the device events themselves, not from key_averages' CPU-op tree. Returned:
{"reps", "gpu_busy_us" (union of kernel intervals per rep), "kernels_per_rep", "kernels": [{"name", "total_us",
"count", "us_per_rep", "calls_per_rep", "share"}] sorted by total_us}; "kind" tags each kernel (gemm, attention,
norm, rotary, activation, copy, elementwise, other) so a reader sees which share is memory-bound.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

# name fragment -> kind, first match wins (lower-case)
_KINDS = (("flash", "attention"), ("fmha", "attention"), ("sdpa", "attention"), ("cudnn", "attention"),
          ("attn", "attention"), ("nvjet", "gemm"), ("gemm", "gemm"), ("cutlass", "gemm"), ("sm90_xmma", "gemm"),
          ("norm", "norm"), ("rope", "rotary"), ("rotary", "rotary"), ("gelu", "activation"),
          ("act", "activation"), ("silu", "activation"), ("copy", "copy"), ("memcpy", "copy"),
          ("memset", "copy"), ("elementwise", "elementwise"), ("gather", "elementwise"), ("reduce", "elementwise"))


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for frag, kind in _KINDS if frag in low), "other")


def union_us(spans) -> float:
    """Length of the union of (start, end) intervals: the time the GPU ran at least one kernel (overlapping
    kernels on several streams count once). Shared by the profiling scripts."""
    total, start, end = 0.0, None, None
    for s, e in sorted(spans):
        if end is None or s > end:
            if end is not None:
                total += end - start
            start, end = s, e
        else:
            end = max(end, e)
    return total + (end - start if end is not None else 0.0)


def kernel_table(fn, reps: int = 5, name_chars: int = 160) -> dict:
    """Profile `reps` calls of fn (after one untimed call) and aggregate the device kernels by name."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows: dict[str, list[float]] = {}
    spans = []
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA or e.time_range.end <= e.time_range.start:
            continue
        spans.append((e.time_range.start, e.time_range.end))
        row = rows.setdefault(e.name[:name_chars], [0.0, 0])
        row[0] += e.time_range.end - e.time_range.start
        row[1] += 1
    busy = union_us(spans)
    kernels = [{"name": n, "kind": kind_of(n), "total_us": round(t, 1), "count": c,
                "us_per_rep": round(t / reps, 2), "calls_per_rep": c / reps,
                "share": round(t / busy, 4) if busy else 0.0}
               for n, (t, c) in sorted(rows.items(), key=lambda kv: -kv[1][0])]
    by_kind: dict[str, float] = {}
    for k in kernels:
        by_kind[k["kind"]] = by_kind.get(k["kind"], 0.0) + k["us_per_rep"]
    return {"reps": reps, "gpu_busy_us": round(busy / reps, 1), "kernels_per_rep": len(spans) / reps,
            "us_per_rep_by_kind": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "kernels": kernels}
