"""Tile configs of the fused-MoE GEMMs, chosen per shape bucket by measurement on the GPU, cached in-process.

A bucket is (device name, dtype, E, H, I, P) with P = T*k pairs rounded up to a power of two. The first call in a
bucket (kernels.moe) times a few candidates on its own inputs: for each BLOCK_M candidate the tokens are aligned
once, then each gate_up tile and each down tile is timed alone, and the BLOCK_M whose best two GEMMs sum lowest
wins. Then the paths (MoeConfig.path) are timed as the whole op, every launch included: that "sorted" winner, the
same tiles with the k-sum fused by atomics ("sorted_atomic", k > 1) and, for P <= PAIRS_MAX_PAIRS, the best
"pairs" tiles (each of its two kernels timed alone first) and the best "decode" config (its one kernel timed alone
first); the fastest is cached. Every timing is kernels.gpu_timing.cold_l2_us, the one bench_moe.py reports (graph
replay after an L2 flush, median). Candidates that fail to compile (shared memory) are skipped. Measuring is
impossible inside CUDA-graph capture: there the cached choice is used, else default_config() (not cached); call
kernels.moe.tune_fused_moe before capturing.
$VLM_MOE_CONFIGS names an optional JSON file (e.g. $VLM_KERNEL_CACHE/moe_configs.json, beside FlashInfer's JIT
cache): choices are read from it at start and written back after each tune.
Under TRITON_INTERPRET (CPU tests) one small fixed config, INTERPRET_CONFIG, is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from kernels.gpu_timing import cold_l2_us

log = logging.getLogger(__name__)
CONFIG_FILE_ENV = "VLM_MOE_CONFIGS"


@dataclasses.dataclass(frozen=True)
class GemmTile:
    """One GEMM's launch: output tile BLOCK_M (shared, see MoeConfig) x block_n, k-step block_k."""
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


PATHS = ("sorted", "sorted_atomic", "pairs", "decode")


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """path "sorted": route, align into BLOCK_M blocks per expert, grouped GEMMs, k-sum (kernels/triton/moe.py);
    block_m is shared by both GEMMs (it fixes the sorted layout). path "pairs" (few tokens): one GEMV program row
    per token-expert pair, routing fused into gate_up and the k-sum into down (kernels/triton/moe_pairs.py);
    block_m is unused (1) and group_m too. path "sorted_atomic": as "sorted", but for k > 1 the down kernel adds
    each pair into an fp32 [T, H] (no [P, H] intermediate, no k-sum launch; the fp32 add order is not fixed).
    path "decode" (few tokens): one kernel per (I-block, pair) computes gate/up, silu*up and its slice's down
    partial product, summed into an fp32 [T, H] by atomics (kernels/triton/moe_decode.py); there gate_up.block_n
    is BLOCK_I, gate_up.block_k the k-step over H, down.block_n BLOCK_H (down.block_k = BLOCK_I, for the record).
    gate_up's block_n counts gate (= up) columns."""
    block_m: int
    gate_up: GemmTile
    down: GemmTile
    path: str = "sorted"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "MoeConfig":
        path = d.get("path", "sorted")  # files written before the pairs path existed
        if path not in PATHS:
            raise ValueError(f"unknown fused_moe path {path!r}")
        return cls(int(d["block_m"]), GemmTile(**d["gate_up"]), GemmTile(**d["down"]), path)


INTERPRET_CONFIG = MoeConfig(16, GemmTile(32, 32, 1, 4, 1), GemmTile(32, 32, 1, 4, 1))


class MoeBucket(NamedTuple):
    device: str
    dtype: str
    experts: int
    hidden: int
    inter: int
    pairs: int  # power-of-two upper bound of T*k

    def __str__(self) -> str:
        return f"{self.device}|{self.dtype}|E={self.experts}|H={self.hidden}|I={self.inter}|P<={self.pairs}"


def pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def block_m_candidates(pairs: int, experts: int) -> list[int]:
    """BLOCK_M around the mean pairs per expert: padding waste stays low, tiles stay large enough for the MMA."""
    mean = pairs / experts
    if mean <= 8:
        return [16]
    if mean <= 24:
        return [16, 32]
    if mean <= 64:
        return [32, 64]
    return [64, 128]


# (block_n, block_k, group_m, num_warps, num_stages). Decode (block_m 16) is bound by reading the weights: narrow
# tiles make enough programs to keep every SM streaming, deep pipelines hide the latency. Prefill is MMA bound: wide
# tiles (gate_up's two accumulators make 2 x block_n columns) and grouping for L2 reuse of the expert's weights.
# All fit the H200's 227 KB of shared memory and compile without spills for sm_90 (checked offline with ptxas at
# H=2048, I=768 bf16); block_m >= 64 runs on wgmma, smaller ones on mma.sync.
# The later entries of each list (second round, after the first H200 run) add narrower / deeper decode tiles and
# other grouping and pipeline depths for prefill; the first entries are the previous lists, so the measured winner
# can only be as fast or faster than before.
_DECODE_TILES = [(32, 128, 1, 4, 4), (64, 128, 1, 4, 3), (64, 64, 1, 4, 5), (32, 64, 1, 4, 5), (128, 128, 1, 4, 3),
                 (16, 128, 1, 4, 4), (16, 256, 1, 4, 4), (32, 256, 1, 4, 3)]
_MID_TILES = [(64, 128, 8, 4, 3), (128, 64, 8, 4, 4), (128, 64, 8, 8, 4), (64, 64, 8, 4, 4)]
_LARGE_TILES = [(128, 64, 16, 8, 4), (128, 64, 16, 8, 3), (64, 64, 16, 4, 4), (64, 128, 16, 4, 3),
                (128, 64, 8, 8, 4), (128, 64, 32, 8, 4), (128, 32, 16, 8, 5)]
_DOWN_LARGE = [(256, 64, 16, 8, 4), (128, 64, 16, 8, 4), (128, 128, 16, 8, 3), (256, 64, 16, 8, 3),
               (256, 64, 8, 8, 4), (256, 64, 32, 8, 4), (128, 64, 16, 4, 5)]


# The pairs path (P <= PAIRS_MAX_PAIRS): (block_n, block_k, group_m unused, num_warps, num_stages). A GEMV is bound by
# the weight stream alone: small block_n makes P * I / block_n (gate_up) and T * H / block_n (down) programs, several
# resident per SM, which keeps enough loads in flight; fp32 accumulators of block_n x block_k stay <= 64 per thread.
PAIRS_MAX_PAIRS = 64
_PAIRS_GATE_UP = [(8, 256, 1, 4, 2), (4, 256, 1, 2, 2), (16, 128, 1, 4, 2), (8, 512, 1, 4, 1), (16, 256, 1, 4, 1)]
_PAIRS_DOWN = [(4, 256, 1, 2, 2), (8, 256, 1, 4, 2), (2, 256, 1, 1, 2), (16, 128, 1, 4, 2), (8, 128, 1, 2, 3)]


# The decode path (P <= PAIRS_MAX_PAIRS, kernels/triton/moe_decode.py): (BLOCK_I, BLOCK_K, BLOCK_H, num_warps,
# num_stages). P * I / BLOCK_I programs (T=1: 96-768) each stream 3 * BLOCK_I * H weights; the gate/up fp32
# accumulators (2 * BLOCK_I * BLOCK_K) and the w2 tile (BLOCK_H * BLOCK_I) stay <= 64 / 32 registers per thread.
# Small BLOCK_I: more programs but more fp32 atomics (H per program) and shorter w2 row chunks (2 * BLOCK_I bytes).
_DECODE_FUSED = [(16, 256, 128, 4, 2), (32, 128, 128, 4, 2), (32, 256, 64, 8, 2), (8, 512, 256, 4, 2),
                 (16, 128, 256, 4, 3), (64, 128, 64, 8, 2), (16, 512, 128, 8, 1)]


def decode_candidates() -> list[MoeConfig]:
    """The decode path's configs: gate_up = (BLOCK_I, BLOCK_K, warps, stages), down.block_n = BLOCK_H."""
    return [MoeConfig(1, GemmTile(bi, bk, 1, w, st), GemmTile(bh, bi, 1, w, st), "decode")
            for bi, bk, bh, w, st in _DECODE_FUSED]


def pairs_candidates(which: str) -> list[GemmTile]:
    """Tiles timed for one pairs-path kernel ("gate_up" | "down")."""
    return [GemmTile(*t) for t in (_PAIRS_GATE_UP if which == "gate_up" else _PAIRS_DOWN)]


def tile_candidates(block_m: int, which: str) -> list[GemmTile]:
    """Tiles timed for one GEMM ("gate_up" | "down") at this BLOCK_M; the first is the untimed default."""
    if block_m <= 16:
        table = _DECODE_TILES
    elif block_m <= 64:
        table = _MID_TILES
    else:
        table = _LARGE_TILES if which == "gate_up" else _DOWN_LARGE
    return [GemmTile(*t) for t in table]


def default_config(bucket: MoeBucket) -> MoeConfig:
    """The choice without measuring (inside graph capture before any tune): the first candidate of each list."""
    bm = block_m_candidates(bucket.pairs, bucket.experts)[-1]
    return MoeConfig(bm, tile_candidates(bm, "gate_up")[0], tile_candidates(bm, "down")[0])


# ---- timing on CUDA ------------------------------------------------------------------------------------------------

# Every timing goes through kernels.gpu_timing.cold_l2_us, the benchmark's own: graph replay, L2 flushed before each
# replay outside the timed events, median of the replays. (The first version timed 6 back-to-back (flush, fn) pairs
# in one graph minus the flushes alone, best of 3: a 128 MB flush costs more than a decode op, so its noise entered
# the difference, and its prefill choices measured slower in bench_moe.py, which timed differently.)
time_launch_us = cold_l2_us


def _fastest(time_tile: Callable, tiles: list, name: Callable = None) -> tuple[object | None, dict]:
    timings = {}
    for tile in tiles:
        try:
            timings[tile] = time_tile(tile)
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: that tile is not a candidate here
            torch.cuda.synchronize()
            log.info("fused_moe tile %s skipped: %s: %s", tile, type(e).__name__, str(e)[:200])
    best = min(timings, key=timings.get, default=None)
    return best, {(name or _tile_name)(t): round(us, 2) for t, us in timings.items()}


def _tile_name(t: GemmTile) -> str:
    return f"n{t.block_n}_k{t.block_k}_g{t.group_m}_w{t.num_warps}_s{t.num_stages}"


def measure_config(bucket: MoeBucket, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
                   ids: torch.Tensor, counts: torch.Tensor, top_k: int,
                   run: Callable[[MoeConfig], object] | None = None) -> tuple[MoeConfig, dict]:
    """Time the candidates on these very inputs (see the module docstring); returns the winner and the timings.

    run(config) runs the whole op with a forced config: the best sorted config, the same tiles as "sorted_atomic"
    (k > 1) and, where eligible, the best pairs config are timed end to end through it (every launch, routing
    included) and the fastest wins, so another path is only chosen where it measured faster than "sorted"."""
    best, timings = _measure_sorted(bucket, x, w13, w2, weights, ids, counts, top_k)
    if run is None:
        return best, timings
    paths = [best] + ([dataclasses.replace(best, path="sorted_atomic")] if top_k > 1 else [])
    if ids.numel() <= PAIRS_MAX_PAIRS:
        pairs, timings["pairs"] = _measure_pairs(x, w13, w2, weights, ids, top_k)
        paths += [pairs] if pairs is not None else []
        decode, timings["decode"] = _measure_decode(x, w13, w2, weights, ids, top_k)
        paths += [decode] if decode is not None else []
    whole = {}
    for cfg in paths:
        try:
            whole[cfg] = time_launch_us(lambda: run(cfg))
        except Exception as e:  # noqa: BLE001 - a path that cannot run here is no candidate
            torch.cuda.synchronize()
            log.info("fused_moe path %s skipped: %s: %s", cfg.path, type(e).__name__, str(e)[:200])
    timings["end_to_end"] = {c.path: round(us, 2) for c, us in whole.items()}
    return min(whole, key=whole.get, default=best), timings


def _measure_sorted(bucket, x, w13, w2, weights, ids, counts, top_k) -> tuple[MoeConfig, dict]:
    from kernels import moe_launch as launch

    pairs, (experts, two_i, hidden) = ids.numel(), w13.shape
    out_pairs = torch.empty(pairs, hidden, dtype=x.dtype, device=x.device)
    best, timings = None, {}
    for bm in block_m_candidates(bucket.pairs, bucket.experts):
        layout = launch.align(ids, counts, experts, bm)
        inter = torch.empty(layout.sorted_ids.shape[0], two_i // 2, dtype=x.dtype, device=x.device)
        gu, gu_us = _fastest(lambda t: time_launch_us(lambda: launch.gate_up(x, w13, layout, top_k, t, inter)),
                             tile_candidates(bm, "gate_up"))
        dn, dn_us = _fastest(lambda t: time_launch_us(lambda: launch.down(inter, w2, layout, weights, t, out_pairs)),
                             tile_candidates(bm, "down"))
        timings[f"block_m={bm}"] = {"gate_up": gu_us, "down": dn_us}
        if gu is not None and dn is not None:
            total = gu_us[_tile_name(gu)] + dn_us[_tile_name(dn)]
            if best is None or total < best[0]:
                best = (total, MoeConfig(bm, gu, dn))
    if best is None:
        raise RuntimeError(f"no fused_moe tile config could run for {bucket}: {timings}")
    return best[1], timings


def _measure_pairs(x, w13, w2, weights, ids, top_k) -> tuple[MoeConfig | None, dict]:
    """The pairs path's tiles, each kernel alone (gate_up reading the given ids, as fused_experts runs it)."""
    from kernels import moe_launch as launch

    flat_ids, flat_w = ids.reshape(-1), weights.reshape(-1)
    inter = torch.empty(ids.numel(), w2.shape[2], dtype=x.dtype, device=x.device)
    out = torch.empty_like(x)
    gu, gu_us = _fastest(lambda t: time_launch_us(
        lambda: launch.pairs_gate_up(x, w13, top_k, t, inter, flat_ids, flat_w)), pairs_candidates("gate_up"))
    dn, dn_us = _fastest(lambda t: time_launch_us(
        lambda: launch.pairs_down(inter, w2, flat_ids, flat_w, top_k, t, out)), pairs_candidates("down"))
    timings = {"gate_up": gu_us, "down": dn_us}
    if gu is None or dn is None:
        return None, timings
    return MoeConfig(1, gu, dn, "pairs"), timings


def _measure_decode(x, w13, w2, weights, ids, top_k) -> tuple[MoeConfig | None, dict]:
    """The decode path's configs, each as its zeroing + kernel on the given routing (as fused_experts runs it)."""
    from kernels import moe_launch as launch

    flat_ids, flat_w = ids.reshape(-1), weights.reshape(-1)
    acc = torch.empty(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)

    def once(cfg: MoeConfig) -> float:
        return time_launch_us(lambda: (acc.zero_(), launch.decode_fused(
            x, w13, w2, top_k, cfg.gate_up, cfg.down, acc, ids=flat_ids, weights=flat_w)))

    return _fastest(once, decode_candidates(), name=lambda c: f"{_tile_name(c.gate_up)}_h{c.down.block_n}")


# ---- the cache -----------------------------------------------------------------------------------------------------

class MoeTuner:
    """bucket -> MoeConfig, filled by measurement (tune) and optionally mirrored to a JSON file."""

    def __init__(self, path: str | None = None):
        self._path = Path(path) if path else None
        self._chosen: dict[MoeBucket, MoeConfig] = {}
        self._timings: dict[MoeBucket, dict] = {}
        self._lock = threading.Lock()
        if self._path is not None and self._path.exists():
            self._load()

    @classmethod
    def from_env(cls) -> "MoeTuner":
        return cls(os.environ.get(CONFIG_FILE_ENV) or None)

    def get(self, bucket: MoeBucket) -> MoeConfig | None:
        return self._chosen.get(bucket)

    def put(self, bucket: MoeBucket, config: MoeConfig, timings: dict) -> None:
        with self._lock:
            self._chosen[bucket], self._timings[bucket] = config, timings
            if self._path is not None:
                self._save()
        log.info("fused_moe config for %s: %s", bucket, config)

    def choices(self) -> dict[str, dict]:
        """Bucket (as text) -> the chosen config as a dict."""
        return {str(b): c.to_json() for b, c in list(self._chosen.items())}

    def timings(self) -> dict[str, dict]:
        """Bucket (as text) -> {"block_m=..": {"gate_up": {tile: µs}, "down": {...}}} as measured."""
        return {str(b): dict(t) for b, t in list(self._timings.items())}

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_text())
            for entry in data.get("configs", []):
                self._chosen[MoeBucket(*entry["bucket"])] = MoeConfig.from_json(entry["config"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable fused_moe config file %s: %s", self._path, e)

    def _save(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            configs = [{"bucket": list(b), "config": c.to_json()} for b, c in self._chosen.items()]
            tmp.write_text(json.dumps({"configs": configs, "timings_us": self.timings()}, indent=1))
            tmp.replace(self._path)
        except OSError as e:
            log.warning("could not write fused_moe config file %s: %s", self._path, e)
