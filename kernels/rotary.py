"""Rotary embeddings, in place on q and k: 2D vision rope and fused 3D MRoPE (contiguous and interleaved).

CUDA -> one fused Triton launch for q and k (kernels/triton/rotary.py); CPU -> kernels.reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_last_contiguous, check_same_device, next_pow2, use_triton


@dataclass(frozen=True)
class RopeLaunch:
    """Tile choice of the fused rope kernel (benchmarks/bench_kernels.py sweeps these).

    block_t: tokens per program (cos/sin [block_t, D/2] are built once per program); block_h: heads rotated per
    loop step; num_warps: warps per program; head_split: programs per token block along the heads (1 = one program
    walks every q and k head of its tokens).
    """

    block_t: int
    block_h: int
    num_warps: int = 4
    head_split: int = 1

    def __post_init__(self):
        for name in ("block_t", "block_h", "num_warps", "head_split"):
            v = getattr(self, name)
            check(isinstance(v, int) and v >= 1, f"RopeLaunch.{name} must be a positive int, got {v!r}")
        for name in ("block_t", "block_h", "num_warps"):
            v = getattr(self, name)
            check(v & (v - 1) == 0, f"RopeLaunch.{name} must be a power of two, got {v}")


def default_launch(head_dim: int, interleaved: bool = False) -> RopeLaunch:
    """The tile measured fastest on the H200 at D=128, T=4096, 28/4 heads (benchmarks/results/2026-11-29_h200/
    mrope.json): 32 tokens x 2 heads for the contiguous layout, 8 x 4 for the interleaved one (4 warps). Smaller
    head dims take proportionally more heads per step, so a step moves the same bytes."""
    block_t, block_h = (8, 4) if interleaved else (32, 2)
    return RopeLaunch(block_t=block_t, block_h=block_h * max(1, 64 // next_pow2(head_dim // 2)), num_warps=4)


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    check(q.dim() == 3 and k.dim() == 3, f"q and k must be [T, H, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    check(q.shape[0] == k.shape[0], f"q and k must have the same T, got {q.shape[0]} and {k.shape[0]}")
    check(q.shape[2] == k.shape[2] and q.shape[2] % 2 == 0 and q.shape[2] > 0,
          f"q and k must share an even head_dim, got {q.shape[2]} and {k.shape[2]}")
    check(q.dtype == k.dtype, f"q and k must have one dtype, got {q.dtype} and {k.dtype}")
    check_float("q", q)
    check_last_contiguous("q", q)
    check_last_contiguous("k", k)


def _launch(q, k, cos, sin, positions, section, interleaved: bool, launch: RopeLaunch | None) -> None:
    from kernels.triton.rotary import rope_kernel

    t, hq, d = q.shape
    hk = k.shape[1]
    if t == 0:
        return
    cfg = launch or default_launch(d, interleaved)
    split = max(1, min(cfg.head_split, max(hq, hk)))
    hq_per, hk_per = -(-hq // split), -(-hk // split)  # heads per program along grid axis 1
    grid = (-(-t // cfg.block_t), split)
    use_pos = positions is not None
    pos = positions if use_pos else q  # unused pointer when not use_pos
    s0, s1, s2 = section if use_pos else (0, 0, 0)
    rope_kernel[grid](
        q, k, cos, sin, pos, t, hq, hk, hq_per, hk_per,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        pos.stride(0) if use_pos else 0, pos.stride(1) if use_pos else 0,
        HALF=d // 2, USE_POS=use_pos, INTERLEAVED=bool(interleaved), S0=s0, S1=s1, S2=s2,
        BLOCK_T=cfg.block_t, BLOCK_H=cfg.block_h, BLOCK_F=next_pow2(d // 2),
        Q_STEPS=-(-hq_per // cfg.block_h), K_STEPS=-(-hk_per // cfg.block_h), num_warps=cfg.num_warps)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, impl: str = "auto",
                  launch: RopeLaunch | None = None) -> None:
    """q [T, Hq, D], k [T, Hk, D], cos/sin [T, D/2]; neox (rotate-half) layout, in place."""
    _check_qk(q, k)
    t, _, d = q.shape
    for name, c in (("cos", cos), ("sin", sin)):
        check(c.shape == (t, d // 2), f"{name} must be [T, D/2] = {(t, d // 2)}, got {tuple(c.shape)}")
        check_float(name, c)
        check_last_contiguous(name, c)
    check_same_device(("q", q), ("k", k), ("cos", cos), ("sin", sin))
    if use_triton(impl, q):
        _launch(q, k, cos, sin, None, None, False, launch)
    else:
        reference.apply_rotary_(q, k, cos, sin)


def _check_mrope(q, positions, cos_sin_cache, mrope_section) -> tuple[int, int, int]:
    t, _, d = q.shape
    check(positions.dim() == 2 and positions.shape == (3, t), f"positions must be [3, T] = {(3, t)}, "
          f"got {tuple(positions.shape)}")
    check(positions.dtype in (torch.int64, torch.int32), f"positions must be int64 or int32, got {positions.dtype}")
    check(cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == d,
          f"cos_sin_cache must be [max_pos, D={d}], got {tuple(cos_sin_cache.shape)}")
    check_float("cos_sin_cache", cos_sin_cache)
    check_last_contiguous("cos_sin_cache", cos_sin_cache)
    section = tuple(int(s) for s in mrope_section)
    check(len(section) == 3 and min(section) >= 0 and sum(section) == d // 2,
          f"mrope_section must be 3 non-negative ints summing to D/2={d // 2}, got {list(section)}")
    return section


def apply_mrope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                 mrope_section, interleaved: bool, impl: str = "auto", launch: RopeLaunch | None = None) -> None:
    """In-place 3D MRoPE: q [T, Hq, D], k [T, Hk, D], positions [3, T] (t, h, w), cos_sin_cache [max_pos, D].

    interleaved=False is Qwen2.5-VL's contiguous sections, True Qwen3-VL's t,h,w interleave. Positions must lie in
    [0, max_pos); the CUDA path does not check them (that would cost a sync).
    """
    _check_qk(q, k)
    section = _check_mrope(q, positions, cos_sin_cache, mrope_section)
    check_same_device(("q", q), ("k", k), ("positions", positions), ("cos_sin_cache", cos_sin_cache))
    if use_triton(impl, q):
        _launch(q, k, cos_sin_cache, cos_sin_cache, positions, section, interleaved, launch)
    else:
        reference.apply_mrope_(q, k, positions, cos_sin_cache, section, interleaved)
