"""CUDA graphs for the vision tower, one per image-grid signature.

A tower encode launches hundreds of small per-layer kernels, so host time bounds it (torch.profiler, H200, one 1024²
image: Qwen2.5-VL-7B tower 38.8 ms wall for 24.1 ms of GPU work; the profiler adds host time of its own). Production
traffic repeats resolutions, so each tower splits its forward into metadata(grid_thw) (host work, kept per grid) and
compute(pixels, metadata) (device kernels only), and VisionGraphRunner captures compute once per key and replays it.
benchmarks/bench_vit_encode.py, 2026-11-29, fa3, two runs: Qwen2.5-VL-7B 25.8 / 27.3 ms eager -> 24.0 / 24.1 ms
replayed, Qwen3-VL-8B 15.9 / 16.0 -> 14.6 / 14.8 ms, i.e. about the GPU busy time.

Key: (grid rows, pixel dtype and shape, device, identity of the attention backends). Per key:
- first sight: eager. `auto` times its candidates and cuDNN builds its graphs then; both synchronize, which a
  capture forbids.
- second sight: metadata built once and kept, pixels copied into a static buffer, one warm-up and the capture
  (CudaGraphCapture); one replay is checked against an eager run of the same inputs, whose result is returned.
- later sights: pixels copied in, replay, outputs CLONED (a replay rewrites the graph's output buffers, and callers
  such as the engine's vision cache keep results across calls).
Any exception while capturing, or a replay that disagrees with eager, logs one warning and makes the key eager-only.

What a replay reads must outlive it: the entry keeps the metadata, the static input, the outputs and the backends
(so a backend's id is not reused while its key is cached); device tensors the backends derive from cu_seqlens live as
long as the cu_seqlens tensor itself (vit_backends.base.PerTensorCache). All graphs allocate from one memory pool, which
is safe because they replay one at a time on the caller's stream; that pool (about the largest capture's activations)
stays reserved while graphs are cached, outside the caching allocator's reach for eager work.

Only launch-bound encodes are captured: at most `max_patches` patches (DEFAULT_MAX_PATCHES) per encode; larger ones
run eagerly and take no LRU slot. Above that size the GPU work outlasts the host's launches anyway, and under load a
size cap keeps the keys few: the engine batches the images admitted together, so every batch size is a new key, and
in the H200 load test (32 in flight, one 560² image each: 1296 patches) about 12 % of requests sat in an encode
that took 100-280 ms instead of about 20-35 ms, after a warm-up of 64 requests at the same concurrency: captures
of batch keys seen a second time, new ones or ones the LRU of 8 had dropped (a capture costs a warm-up run, the
capture, a replay and an eager check).

Off switch: VisionGraphRunner(enabled=False), the `enabled` attribute, or VLM_VIT_CUDA_GRAPHS=0 in the environment.
Not thread-safe: one encode at a time (the engine's step loop).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

log = logging.getLogger(__name__)

ENV_SWITCH = "VLM_VIT_CUDA_GRAPHS"
DEFAULT_CAPACITY = 8
# Patches per encode up to which graphs are used: two 1024² Qwen3-VL images (4096 patches each), one 1024² Qwen2.5-VL
# image (5476). One 1024² image measured eager vs replayed: 7B 26.3 vs 24.0 ms, 8B 16.3 vs 14.6 ms (2026-11-29).
DEFAULT_MAX_PATCHES = 8192
# replay vs eager on the same inputs: relative L2 error per output. bf16 kernels picked differently under capture
# differ by far less; a graph that reads freed or stale memory differs by far more.
MAX_REPLAY_ERROR = 0.05

Outputs = list[torch.Tensor]


def enabled_by_env() -> bool:
    """False when VLM_VIT_CUDA_GRAPHS is 0 / false / no / off."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


class Captured(NamedTuple):
    """A captured compute step: replay() rewrites `outputs` in place from the static input."""
    replay: Callable[[], None]
    outputs: Outputs


class CudaGraphCapture:
    """Warm-up and capture of `run` on one side stream per device, every graph in one shared memory pool."""

    def __init__(self):
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._pool = None

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def __call__(self, run: Callable[[], Outputs], device: torch.device) -> Captured:
        with torch.cuda.device(device):
            caller = torch.cuda.current_stream()
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            stream.wait_stream(caller)  # the static input was written on the caller's stream
            try:
                with torch.cuda.stream(stream):
                    # builds the backends' per-cu_seqlens tables (sdpa syncs for them) and per-stream library state
                    run()
                # thread_local: CUDA calls of other threads (preprocessing, the server) do not break this capture
                with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
                    outputs = run()
            finally:
                # a failing capture_end skips torch.cuda.graph's own restore of the current stream
                torch.cuda.set_stream(caller)
                caller.wait_stream(stream)
        return Captured(graph.replay, outputs)


@dataclass
class _Entry:
    """One key's state: seen once (graph None), eager-only, or captured with everything its replays read."""
    backends: tuple  # held so that no other object takes their ids while the key is cached
    eager_only: bool = False
    graph: Captured | None = None
    meta: Any = None
    static: torch.Tensor | None = None  # the input buffer the graph reads


class VisionGraphRunner:
    """Runs a tower's compute eagerly or by CUDA-graph replay, per key, with an LRU of `capacity` keys.

    capture: the capturing seam (CudaGraphCapture by default; tests pass a fake). enabled=None reads
    VLM_VIT_CUDA_GRAPHS (default on); `enabled` may be flipped later (the benchmark forces eager with it).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, enabled: bool | None = None, capture=None,
                 max_patches: int = DEFAULT_MAX_PATCHES):
        self.capacity = capacity
        self.max_patches = max_patches
        self.enabled = enabled_by_env() if enabled is None else enabled
        self._capture = CudaGraphCapture() if capture is None else capture
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.replays = 0

    def counts(self) -> dict[str, int]:
        """Cached keys by state (seen once / graph / eager-only) and replays so far: whether graphs are in use."""
        graphs = sum(e.graph is not None for e in self._entries.values())
        eager = sum(e.eager_only for e in self._entries.values())
        return {"seen": len(self._entries) - graphs - eager, "graph": graphs, "eager_only": eager,
                "replays": self.replays}

    def run(self, pixels: torch.Tensor, grid_rows: Sequence[Sequence[int]], backends: Sequence[object],
            prepare: Callable[[], Any], compute: Callable[[torch.Tensor, Any], Outputs]) -> tuple[Any, Outputs]:
        """(metadata, compute(pixels, metadata)) for the images of `grid_rows`, eager or replayed.

        prepare() builds the metadata (from the grids alone); compute(pixels, metadata) must launch device kernels
        only. backends: the attention backends compute calls (their identity is part of the key).
        """
        if not (self.enabled and pixels.shape[0] <= self.max_patches and self._capture.supports(pixels.device)):
            return self._eager(pixels, prepare, compute)
        key = (tuple(map(tuple, grid_rows)), pixels.dtype, tuple(pixels.shape),
               pixels.device, tuple(id(b) for b in backends))
        entry = self._entries.get(key)
        if entry is None:
            self._insert(key, tuple(backends))
            return self._eager(pixels, prepare, compute)
        self._entries.move_to_end(key)
        if entry.eager_only:
            return self._eager(pixels, prepare, compute)
        if entry.graph is None:
            return self._try_capture(key, entry, pixels, prepare, compute)
        entry.static.copy_(pixels)
        entry.graph.replay()
        self.replays += 1
        return entry.meta, [t.clone() for t in entry.graph.outputs]

    @staticmethod
    def _eager(pixels, prepare, compute) -> tuple[Any, Outputs]:
        meta = prepare()
        return meta, compute(pixels, meta)

    def _insert(self, key: tuple, backends: tuple) -> None:
        self._entries[key] = _Entry(backends=backends)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)  # a dropped graph is freed once its in-flight replay ends

    def _try_capture(self, key, entry: _Entry, pixels, prepare, compute) -> tuple[Any, Outputs]:
        meta = prepare()
        with torch.inference_mode(False):  # a normal tensor: later calls may copy into it outside inference mode
            static = torch.empty_like(pixels)
        static.copy_(pixels)
        try:
            graph = self._capture(lambda: compute(static, meta), pixels.device)
            graph.replay()
            expected = compute(static, meta)
            _check_replay(graph.outputs, expected)
        except Exception as e:  # any failure: this key stays eager, the encode still succeeds
            log.warning("ViT CUDA graph for grids %s (%s) failed, this shape runs eagerly: %s: %s",
                        list(key[0]), str(key[1]).removeprefix("torch."), type(e).__name__, e)
            entry.eager_only = True
            return self._eager(pixels, prepare, compute)
        entry.graph, entry.meta, entry.static = graph, meta, static
        return meta, expected


def _check_replay(replayed: Outputs, expected: Outputs) -> None:
    """Raise when a replay's outputs differ from eager ones beyond MAX_REPLAY_ERROR (relative L2, per output)."""
    if len(replayed) != len(expected):
        raise RuntimeError(f"replay gave {len(replayed)} outputs, eager {len(expected)}")
    for i, (got, want) in enumerate(zip(replayed, expected)):
        if got.shape != want.shape:
            raise RuntimeError(f"replay output {i} has shape {tuple(got.shape)}, eager {tuple(want.shape)}")
        err = float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12))
        if not err <= MAX_REPLAY_ERROR:  # also catches NaN
            raise RuntimeError(f"replay output {i} differs from eager: relative L2 error {err:.3g}")
