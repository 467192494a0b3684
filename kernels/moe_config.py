"""Fused-MoE launch configs and the candidates the tuner (kernels/moe_tuning.py) times, per shape bucket.

Pure data, no measuring: the launchers (kernels/moe_launch.py) take these tiles, the tuner picks among the
candidate lists, and default_config() is the choice where measuring is impossible (inside CUDA-graph capture).
Under TRITON_INTERPRET (CPU tests) one small fixed config, INTERPRET_CONFIG, is used.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


@dataclasses.dataclass(frozen=True)
class GemmTile:
    """One GEMM's launch: output tile BLOCK_M (shared, see MoeConfig) x block_n, k-step block_k."""
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    tma: bool = False  # sorted GEMMs only: the weight tiles by TMA (sm_90+; the tuner skips it elsewhere)


PATHS = ("sorted", "sorted_atomic", "pairs", "decode", "gemv", "gemv_pdl", "gemv_routed")
GEMV_PATHS = ("gemv", "gemv_pdl", "gemv_routed")


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
    paths "gemv" / "gemv_pdl" (few tokens, kernels/triton/moe_gemv.py): as "pairs" with unrolled K loops and a
    down kernel over all k picks at once; "gemv_pdl" overlaps the two kernels (programmatic dependent launch);
    "gemv_routed" routes once in the route kernel first, then runs both gemv kernels on its ids (as gemv_pdl on
    sm_90+, as gemv elsewhere), so no program waits on its own softmax + top-k before its first weight load.
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
# Third round (a trailing True): the weight operand by TMA through a host tensor descriptor (sm_90+ only; the tuner
# skips these elsewhere): the copy engine fills the pipeline's shared memory instead of every thread's cp.async
# address math, which frees issue slots for the wgmma loop; the gathered activation rows stay pointer loads. Shared
# memory per stage is unchanged, so the same (block_n, block_k, stages) fit; the winners of the second round plus
# one deeper or wider neighbour. Fourth round (after the TMA winners, gate_up n128 k64 s4 465 us and down n256 k64
# s4 227 us at 4096 tokens): the same tiles with a k32 step 6 deep (24 KB A+B per stage for gate_up, 144 KB in
# all; down 24 KB, 144 KB), so more loads stay in flight per SM at equal shared memory, and gate_up with group 8.
# (gate_up n256 needs 2 x 256 fp32 accumulator columns: 256 registers per thread at 8 warps, so it is no candidate.)
_MID_TILES = [(64, 128, 8, 4, 3), (128, 64, 8, 4, 4), (128, 64, 8, 8, 4), (64, 64, 8, 4, 4),
              (128, 64, 8, 4, 4, True)]
_LARGE_TILES = [(128, 64, 16, 8, 4), (128, 64, 16, 8, 3), (64, 64, 16, 4, 4), (64, 128, 16, 4, 3),
                (128, 64, 8, 8, 4), (128, 64, 32, 8, 4), (128, 32, 16, 8, 5),
                (128, 64, 16, 8, 4, True), (64, 128, 16, 4, 3, True),
                (128, 32, 16, 8, 6, True), (128, 64, 8, 8, 4, True)]
_DOWN_LARGE = [(256, 64, 16, 8, 4), (128, 64, 16, 8, 4), (128, 128, 16, 8, 3), (256, 64, 16, 8, 3),
               (256, 64, 8, 8, 4), (256, 64, 32, 8, 4), (128, 64, 16, 4, 5),
               (256, 64, 16, 8, 4, True), (128, 128, 16, 8, 3, True),
               (256, 32, 16, 8, 6, True)]


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


# The gemv paths (P <= PAIRS_MAX_PAIRS, kernels/triton/moe_gemv.py): (block_n, block_k, group_m unused, num_warps,
# num_stages unused: the K loop is unrolled). gate_up: P * I / block_n programs each with 2 * block_n * H weights,
# all loads unrolled; per thread 2 * block_n * block_k / (32 * warps) elements per step (<= 32, fp32 accumulators
# <= 32 registers) and H / block_k steps in flight. down: a [pow2(k), block_n, block_k] tile of every pick's w2 rows
# per step; block_k 1024 covers I = 768 in one masked step (so under PDL the whole w2 tile loads before the wait).
_GEMV_GATE_UP = [(4, 512, 1, 4, 1), (8, 256, 1, 4, 1), (2, 1024, 1, 4, 1), (4, 1024, 1, 8, 1), (2, 2048, 1, 8, 1)]
_GEMV_DOWN = [(1, 1024, 1, 4, 1), (2, 1024, 1, 8, 1), (1, 1024, 1, 8, 1), (2, 256, 1, 2, 1), (4, 256, 1, 4, 1)]


def gemv_candidates(which: str) -> list[GemmTile]:
    """Tiles timed for one gemv-path kernel ("gate_up" | "down")."""
    return [GemmTile(*t) for t in (_GEMV_GATE_UP if which == "gate_up" else _GEMV_DOWN)]


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
