"""`auto`: pick the fastest ViT attention backend per shape bucket, by measurement, once.

A bucket is (device, dtype, heads, head_dim, tokens, max_seqlen, segments), the last three rounded up to powers of
two. The first call in a bucket runs every candidate that supports the inputs on those very inputs: one untimed
call (cuDNN graph build, kernel load), then the best of 5 loops of 4-20 back-to-back calls timed with CUDA events
decides (time_us). The winner is cached for the bucket and logged once; `choices()` exposes it. On CPU the choice
is sdpa, without measuring.
Measure outside CUDA-graph capture: the first call per bucket synchronizes the device.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import torch

from vit_backends.base import ViTAttention

log = logging.getLogger(__name__)
_EXACT_MEMO_SIZE = 4096


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class ShapeBucket(NamedTuple):
    """The key auto caches its choice under; tokens / max_seqlen / segments are power-of-two upper bounds."""
    device: str
    dtype: str
    heads: int
    head_dim: int
    tokens: int
    max_seqlen: int
    segments: int

    def __str__(self) -> str:
        return (f"{self.device} {self.dtype} H={self.heads} D={self.head_dim} T<={self.tokens} "
                f"L<={self.max_seqlen} S<={self.segments}")


def shape_bucket(q: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> ShapeBucket:
    """Bucket of packed inputs q [T, H, D] with cu_seqlens [S+1]."""
    tokens, heads, dim = q.shape
    return ShapeBucket(str(q.device), str(q.dtype).removeprefix("torch."), heads, dim, _pow2(tokens),
                       _pow2(int(max_seqlen)), _pow2(cu_seqlens.shape[0] - 1))


LOOP_TARGET_US = 400.0  # an adaptive timing loop lasts about this long, so host launch jitter averages out
MIN_INNER, MAX_INNER = 4, 20


def _inner_calls(backend: ViTAttention, args: tuple) -> int:
    """Calls per timing loop: enough for ~LOOP_TARGET_US, clamped to [MIN_INNER, MAX_INNER], from one timed call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    backend.forward(*args)
    end.record()
    end.synchronize()
    one_us = max(start.elapsed_time(end) * 1e3, 1e-3)
    return max(MIN_INNER, min(MAX_INNER, int(LOOP_TARGET_US / one_us) + 1))


def loop_times_us(backend: ViTAttention, args: tuple, reps: int = 5, inner: int | None = None) -> list[float]:
    """µs per call of backend(*args) on CUDA for each of `reps` loops of `inner` back-to-back calls (CUDA events).

    One untimed call first (graph builds, kernel loads). inner=None picks it from the call's cost (MIN_INNER for
    slow shapes, up to MAX_INNER for launch-bound ones), which keeps auto's first call per bucket cheap.
    """
    backend.forward(*args)
    torch.cuda.synchronize()
    inner = _inner_calls(backend, args) if inner is None else inner
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            backend.forward(*args)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / inner)
    return samples


def graph_times_us(backend: ViTAttention, args: tuple, reps: int = 5, inner: int = 8) -> list[float]:
    """µs of device time per call: `inner` calls captured in one CUDA graph, replayed `reps` times (CUDA events).

    This is what a call costs inside the vision tower's CUDA graph (models/vision_graphs.py), where the towers run
    once an image size repeats: no host launch time, which on small shapes jitters by +-50 % per eager call and
    would decide the pick. Raises when the backend cannot be captured (callers fall back to loop_times_us)."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()  # first: no CUDA -> raise before any call
    backend.forward(*args)  # untimed: cuDNN graph builds, kernel loads, per-cu_seqlens caches (no host work later)
    torch.cuda.synchronize()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        backend.forward(*args)
    torch.cuda.current_stream().wait_stream(stream)
    # thread_local: the server's other threads (preprocessing pins memory) must neither break nor be broken by it
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(inner):
            backend.forward(*args)
    graph.replay()  # untimed first replay
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / inner)
    del graph
    return samples


def time_us(backend: ViTAttention, args: tuple, reps: int = 5, inner: int | None = None) -> float:
    """µs per call: the best of `reps` graph replays (graph_times_us: device time, as the towers run in their CUDA
    graphs); a backend that cannot be captured is timed by the best of `reps` loops of back-to-back eager calls
    (loop_times_us). benchmarks/bench_vit_backends.py times with the same functions."""
    try:
        return min(graph_times_us(backend, args, reps))
    except Exception as e:  # e.g. a host sync inside the backend: eager loops still compare it fairly enough
        log.info("auto: %s not capturable for timing (%s); timing eager loops", backend.name, type(e).__name__)
        torch.cuda.synchronize()
        return min(loop_times_us(backend, args, reps, inner))


class AutoAttention(ViTAttention):
    """Dispatches each call to the backend measured fastest for its shape bucket.

    candidates: name -> factory, in order of preference (ties and CPU go to the first usable, sdpa on CPU).
    """

    name = "auto"

    def __init__(self, candidates: dict[str, Callable[[], ViTAttention]], reps: int = 5):
        self._factories = dict(candidates)
        self._built: dict[str, ViTAttention | None] = {}
        self._winner: dict[ShapeBucket, ViTAttention] = {}
        self._timings: dict[ShapeBucket, dict[str, float]] = {}
        self._exact: dict[tuple, ViTAttention] = {}
        self._reps = reps

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        # exact-shape memo first: a few dict ops per call, so auto costs ~nothing over its pick on small shapes
        exact = (q.shape, q.dtype, q.device, cu_seqlens.shape[0], max_seqlen)
        backend = self._exact.get(exact)
        if backend is None:
            backend = self._lookup(q, k, v, cu_seqlens, max_seqlen)
            if len(self._exact) >= _EXACT_MEMO_SIZE:
                self._exact.clear()
            self._exact[exact] = backend
        return backend.forward(q, k, v, cu_seqlens, max_seqlen)

    def _lookup(self, q, k, v, cu_seqlens, max_seqlen) -> ViTAttention:
        bucket = shape_bucket(q, cu_seqlens, max_seqlen)
        backend = self._winner.get(bucket)
        if backend is None:
            backend = self._resolve(bucket, (q, k, v, cu_seqlens, max_seqlen))
        return backend

    def choices(self) -> dict[str, str]:
        """Bucket (as text) -> name of the backend chosen for it."""
        # a snapshot: the engine thread may add a bucket while the server thread asks
        return {str(bucket): backend.name for bucket, backend in list(self._winner.items())}

    def timings(self) -> dict[str, dict[str, float]]:
        """Bucket (as text) -> µs per call measured for each candidate (empty where nothing was measured)."""
        return {str(bucket): dict(t) for bucket, t in self._timings.items()}

    def _backend(self, name: str) -> ViTAttention | None:
        if name not in self._built:
            try:
                self._built[name] = self._factories[name]()
            except ImportError as e:
                log.warning("auto: ViT attention candidate %s unavailable: %s", name, e)
                self._built[name] = None
        return self._built[name]

    def _candidates(self, q: torch.Tensor) -> dict[str, ViTAttention]:
        found = {}
        for name in self._factories:
            backend = self._backend(name)
            if backend is not None and backend.supports(q.device, q.dtype, q.shape[-1]):
                found[name] = backend
        if not found:
            raise RuntimeError(f"no ViT attention backend supports {q.dtype} head_dim {q.shape[-1]} on {q.device}")
        return found

    def _measure(self, candidates: dict[str, ViTAttention], args: tuple) -> dict[str, float]:
        timings = {}
        for name, backend in candidates.items():
            try:
                timings[name] = time_us(backend, args, self._reps)
            except Exception as e:  # a candidate that fails on these inputs is skipped, not fatal
                log.warning("auto: ViT attention candidate %s failed, skipped: %s: %s", name, type(e).__name__, e)
        return timings

    @staticmethod
    def _should_measure(device: torch.device, candidates: int) -> bool:
        """Measure on CUDA when there is a choice; on CPU sdpa is the only sensible backend."""
        return device.type == "cuda" and candidates > 1

    def _resolve(self, bucket: ShapeBucket, args: tuple) -> ViTAttention:
        candidates = self._candidates(args[0])
        if not self._should_measure(args[0].device, len(candidates)):
            timings, name = {}, "sdpa" if "sdpa" in candidates else next(iter(candidates))
        else:
            timings = self._measure(candidates, args)
            if not timings:
                raise RuntimeError(f"every ViT attention candidate failed for {bucket}")
            name = min(timings, key=timings.get)
        self._winner[bucket], self._timings[bucket] = candidates[name], timings
        log.info("auto ViT attention for %s: %s %s", bucket, name,
                 " ".join(f"{n}={t:.0f}us" for n, t in timings.items()))
        return candidates[name]
