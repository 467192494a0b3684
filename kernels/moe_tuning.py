"""Tile configs of the fused-MoE GEMMs, chosen per shape bucket by measurement on the GPU, cached in-process.

A bucket is (device name, dtype, E, H, I, P) with P = T*k pairs rounded up to a power of two. The first call in a
bucket (kernels.moe) times a few candidates on its own inputs: for each BLOCK_M candidate the tokens are aligned
once, then each gate_up tile and each down tile is timed alone, and the BLOCK_M whose best two GEMMs sum lowest
wins. Then the paths (MoeConfig.path) are timed as the whole op, every launch included: that "sorted" winner, the
same tiles with the k-sum fused by atomics ("sorted_atomic", k > 1) and, for P <= PAIRS_MAX_PAIRS, the best "pairs"
tiles (each of its two kernels timed alone first), the best "decode" config (its one kernel timed alone first), the
best "gemv" tiles (each kernel alone) and the same tiles as "gemv_pdl" (sm_90+) and "gemv_routed"; the fastest
is cached. Every timing is kernels.gpu_timing.cold_l2_us, the one bench_moe.py reports (graph replay after an L2
flush, median). TMA weight tiles (GemmTile.tma) are candidates on sm_90+ only. Candidates that fail to compile
(shared memory) are skipped. $VLM_MOE_PATHS (allowed_paths) restricts the paths timed end to end, for A/B runs of
the served model; choices read from the file that it excludes are dropped.
Measuring is impossible inside CUDA-graph capture: there the cached choice is used, else default_config() (not
cached); call kernels.moe.tune_fused_moe before capturing.
$VLM_MOE_CONFIGS names an optional JSON file (e.g. $VLM_KERNEL_CACHE/moe_configs.json, beside FlashInfer's JIT
cache): choices are read from it at start and written back after each tune.
The configs and candidate lists are in kernels/moe_config.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable

import torch

from kernels import moe_launch as launch
from kernels.gpu_timing import cold_l2_us
from kernels.moe_config import (GEMV_PATHS, PAIRS_MAX_PAIRS, PATHS, GemmTile, MoeBucket, MoeConfig,
                                block_m_candidates, decode_candidates, gemv_candidates, pairs_candidates,
                                tile_candidates)

log = logging.getLogger(__name__)
CONFIG_FILE_ENV = "VLM_MOE_CONFIGS"
PATHS_ENV = "VLM_MOE_PATHS"


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
    return f"n{t.block_n}_k{t.block_k}_g{t.group_m}_w{t.num_warps}_s{t.num_stages}" + ("_tma" if t.tma else "")


def _runnable(tiles: list[GemmTile], device: torch.device) -> list[GemmTile]:
    """The candidates this device can run: TMA weight tiles only on sm_90+."""
    return [t for t in tiles if not t.tma or launch.pdl_supported(device)]


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
    allowed = allowed_paths()
    paths = [best] + ([dataclasses.replace(best, path="sorted_atomic")] if top_k > 1 else [])
    if ids.numel() <= PAIRS_MAX_PAIRS:
        if "pairs" in allowed:
            pairs, timings["pairs"] = _measure_pairs(x, w13, w2, weights, ids, top_k)
            paths += [pairs] if pairs is not None else []
        if "decode" in allowed:
            decode, timings["decode"] = _measure_decode(x, w13, w2, weights, ids, top_k)
            paths += [decode] if decode is not None else []
        if allowed & set(GEMV_PATHS):
            gemv, timings["gemv"] = _measure_gemv(x, w13, w2, weights, ids, top_k)
            pdl = ["gemv_pdl"] if launch.pdl_supported(x.device) else []
            paths += [dataclasses.replace(gemv, path=p) for p in ["gemv", *pdl, "gemv_routed"]] if gemv else []
    paths = [c for c in paths if c.path in allowed] or [best]  # the sorted winner runs every bucket
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
    pairs, (experts, two_i, hidden) = ids.numel(), w13.shape
    out_pairs = torch.empty(pairs, hidden, dtype=x.dtype, device=x.device)
    best, timings = None, {}
    for bm in block_m_candidates(bucket.pairs, bucket.experts):
        layout = launch.align(ids, counts, experts, bm)
        inter = torch.empty(layout.sorted_ids.shape[0], two_i // 2, dtype=x.dtype, device=x.device)
        gu, gu_us = _fastest(lambda t: time_launch_us(lambda: launch.gate_up(x, w13, layout, top_k, t, inter)),
                             _runnable(tile_candidates(bm, "gate_up"), x.device))
        dn, dn_us = _fastest(lambda t: time_launch_us(lambda: launch.down(inter, w2, layout, weights, t, out_pairs)),
                             _runnable(tile_candidates(bm, "down"), x.device))
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


def _measure_gemv(x, w13, w2, weights, ids, top_k) -> tuple[MoeConfig | None, dict]:
    """The gemv paths' tiles, each kernel alone on the given routing, without PDL (which only overlaps the two)."""
    flat_ids, flat_w = ids.reshape(-1), weights.reshape(-1)
    inter = torch.empty(ids.numel(), w2.shape[2], dtype=x.dtype, device=x.device)
    out = torch.empty_like(x)
    gu, gu_us = _fastest(lambda t: time_launch_us(
        lambda: launch.gemv_gate_up(x, w13, top_k, t, inter, ids=flat_ids)), gemv_candidates("gate_up"))
    dn, dn_us = _fastest(lambda t: time_launch_us(
        lambda: launch.gemv_down(inter, w2, top_k, t, out, ids=flat_ids, weights=flat_w)), gemv_candidates("down"))
    timings = {"gate_up": gu_us, "down": dn_us}
    if gu is None or dn is None:
        return None, timings
    return MoeConfig(1, gu, dn, "gemv"), timings


def _measure_decode(x, w13, w2, weights, ids, top_k) -> tuple[MoeConfig | None, dict]:
    """The decode path's configs, each as its zeroing + kernel on the given routing (as fused_experts runs it)."""
    flat_ids, flat_w = ids.reshape(-1), weights.reshape(-1)
    acc = torch.empty(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)

    def once(cfg: MoeConfig) -> float:
        return time_launch_us(lambda: (acc.zero_(), launch.decode_fused(
            x, w13, w2, top_k, cfg.gate_up, cfg.down, acc, ids=flat_ids, weights=flat_w)))

    return _fastest(once, decode_candidates(), name=lambda c: f"{_tile_name(c.gate_up)}_h{c.down.block_n}")


def allowed_paths() -> frozenset[str]:
    """The paths the tuner may choose: $VLM_MOE_PATHS (a comma list of MoeConfig paths, e.g. "pairs,sorted"; an
    A/B knob for the served model), default all. A bucket where none of them runs (e.g. only "pairs" at
    P > PAIRS_MAX_PAIRS) gets the measured "sorted" config."""
    text = os.environ.get(PATHS_ENV, "").strip()
    if not text:
        return frozenset(PATHS)
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(PATHS))
    if unknown:
        raise ValueError(f"{PATHS_ENV}: unknown fused_moe path {unknown[0][:40]!r}; known: {', '.join(PATHS)}")
    return names


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
        allowed_paths()  # a bad $VLM_MOE_PATHS fails at the first MoE call, not at the first tune
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
            allowed = allowed_paths()
            for entry in data.get("configs", []):
                config = MoeConfig.from_json(entry["config"])
                if config.path in allowed:  # a choice $VLM_MOE_PATHS now excludes is measured again
                    self._chosen[MoeBucket(*entry["bucket"])] = config
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
