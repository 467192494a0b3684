"""Device timing of a launch from cold L2, shared by the fused-MoE tuner (kernels/moe_tuning.py) and the benchmarks
(benchmarks/bench_moe.py), so the tuner ranks candidates the way the benchmark measures them.

fn is captured once in a CUDA graph (no Python launch cost in the timing); each timed replay is preceded, outside
its pair of events, by a write of FLUSH_BYTES (> the H200's 50 MB L2), so every replay reads its weights from HBM
as in a real many-layer step. The median over the replays is reported.
"""

from __future__ import annotations

from typing import Callable

import torch

FLUSH_BYTES = 128 << 20


def cold_l2_us(fn: Callable[[], object], reps: int = 25, warmup: int = 2) -> float:
    """Median µs of device time of one fn() replayed from a CUDA graph, L2 flushed before each replay.

    fn runs once eagerly first (compiles; an error, e.g. a tile that cannot run, propagates from there)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    # not kept between calls: a server tunes after sizing its KV pool (the caching allocator reuses the block)
    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    for _ in range(warmup):
        graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) * 1e3 for start, end in events)
    del graph
    return times[len(times) // 2]
