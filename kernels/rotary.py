"""Rotary embeddings, in place on q and k: 2D vision rope and fused 3D MRoPE (contiguous and interleaved).

CUDA -> one fused Triton launch for q and k (kernels/triton/rotary.py); CPU -> kernels.reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_last_contiguous, check_same_device, next_pow2, use_triton

log = logging.getLogger(__name__)

# (device, mrope_section, interleaved) -> the int32 [D/2] axis table, or None once the table kernel failed there
# (D/2 is sum(mrope_section), so the key implies it). Filled on first use; a model has one or two entries.
_AXIS_TABLES: dict[tuple[torch.device, tuple[int, int, int], bool], torch.Tensor | None] = {}


@dataclass(frozen=True)
class RopeLaunch:
    """Tile choice of the fused rope kernel (benchmarks/bench_kernels.py sweeps these).

    block_t: tokens per program (cos/sin [block_t, D/2] are built once per program); block_h: heads rotated per
    loop step; num_warps: warps per program; head_split: programs per token block along the heads (1 = one program
    walks every q and k head of its tokens); axis_table: MRoPE reads each frequency's axis (t/h/w) from a [D/2]
    device table, so both layouts run the same code, instead of computing it in the kernel (ignored by the 2D rope).
    """

    block_t: int
    block_h: int
    num_warps: int = 4
    head_split: int = 1
    axis_table: bool = True

    def __post_init__(self):
        for name in ("block_t", "block_h", "num_warps", "head_split"):
            v = getattr(self, name)
            check(isinstance(v, int) and v >= 1, lambda: f"RopeLaunch.{name} must be a positive int, got {v!r}")
        for name in ("block_t", "block_h", "num_warps"):
            v = getattr(self, name)
            check(v & (v - 1) == 0, lambda: f"RopeLaunch.{name} must be a power of two, got {v}")
        check(isinstance(self.axis_table, bool),
              lambda: f"RopeLaunch.axis_table must be a bool, got {self.axis_table!r}")


def default_launch(head_dim: int, interleaved: bool = False) -> RopeLaunch:
    """Axis table, 8 tokens x 4 heads, 4 warps at D=128, for both layouts: fastest on the H200 at T=4096, 28/4
    heads, bf16 (bench_kernels.py --only mrope, GPU time from CUDA graph replay, 2026-11-29): 24.0 us contiguous and
    24.3 us interleaved, where 32 x 2 took 29.9 and 30.0 us; with the table both layouts run the same code.
    `interleaved` is taken so a re-tune may split the layouts again. Other head dims keep the elements per step:
    smaller ones take more heads per step, larger ones fewer tokens per program (so cos/sin [block_t, D/2], held in
    registers for the whole program, keep their size)."""
    half = next_pow2(head_dim // 2)
    return RopeLaunch(block_t=max(1, 8 * 64 // max(64, half)), block_h=4 * max(1, 64 // half), num_warps=4)


def vision_launch(head_dim: int) -> RopeLaunch:
    """The 2D vision rope's tile: 32 tokens x 2 heads at D/2 = 64, more heads for smaller head dims. It predates
    the MRoPE re-tune above and has not been swept (benchmarks/bench_kernels.py times only this tile)."""
    return RopeLaunch(block_t=32, block_h=2 * max(1, 64 // next_pow2(head_dim // 2)), num_warps=4)


# enough programs to keep an H200's 132 SMs busy
_MIN_PROGRAMS = 132


def spread_heads(cfg: RopeLaunch, t: int, hq: int) -> RopeLaunch:
    """Few tokens (decode: one per sequence) give few token blocks, and each program would walk every head in
    turn; split the heads across programs instead, up to one block_h group of q heads each."""
    blocks = -(-t // cfg.block_t)
    if blocks >= _MIN_PROGRAMS:
        return cfg
    split = max(1, min(-(-hq // cfg.block_h), _MIN_PROGRAMS // blocks))
    return replace(cfg, head_split=max(cfg.head_split, split))


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    check(q.dim() == 3 and k.dim() == 3,
          lambda: f"q and k must be [T, H, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    check(q.shape[0] == k.shape[0], lambda: f"q and k must have the same T, got {q.shape[0]} and {k.shape[0]}")
    check(q.shape[2] == k.shape[2] and q.shape[2] % 2 == 0 and q.shape[2] > 0,
          lambda: f"q and k must share an even head_dim, got {q.shape[2]} and {k.shape[2]}")
    check(q.dtype == k.dtype, lambda: f"q and k must have one dtype, got {q.dtype} and {k.dtype}")
    check_float("q", q)
    check_last_contiguous("q", q)
    check_last_contiguous("k", k)


def _axis_table(device: torch.device, section: tuple[int, int, int], interleaved: bool) -> torch.Tensor | None:
    """The int32 [D/2] axis table for this layout on `device`, built on first use and cached; None -> use the
    arithmetic axis map. A first use inside CUDA graph capture returns None uncached: the host-to-device copy that
    builds the table cannot be captured (the eager warm-up before capture normally builds it)."""
    key = (device, section, interleaved)
    if key in _AXIS_TABLES:
        return _AXIS_TABLES[key]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        log.warning("MRoPE axis table first needed inside CUDA graph capture; this capture computes the axis")
        return None
    table = reference.mrope_axis_map(section, interleaved).to(device=device, dtype=torch.int32)
    _AXIS_TABLES[key] = table
    return table


def _launch(q, k, cos, sin, positions, section, interleaved: bool, cfg: RopeLaunch,
            axis: torch.Tensor | None) -> None:
    # axis: the MRoPE axis table (AXIS_TABLE variant) or None (arithmetic axis map, or the 2D rope)
    from kernels.triton.rotary import rope_kernel

    t, hq, d = q.shape
    hk = k.shape[1]
    if t == 0:
        return
    split = max(1, min(cfg.head_split, max(hq, hk)))
    hq_per, hk_per = -(-hq // split), -(-hk // split)  # heads per program along grid axis 1
    grid = (-(-t // cfg.block_t), split)
    use_pos = positions is not None
    use_table = axis is not None
    pos = positions if use_pos else q  # unused pointer when not use_pos
    # the table variant gets no layout constants, so both layouts share one compiled kernel
    s0, s1, s2 = section if use_pos and not use_table else (0, 0, 0)
    rope_kernel[grid](
        q, k, cos, sin, pos, axis if use_table else q, t, hq, hk, hq_per, hk_per,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        pos.stride(0) if use_pos else 0, pos.stride(1) if use_pos else 0,
        HALF=d // 2, USE_POS=use_pos, AXIS_TABLE=use_table, INTERLEAVED=bool(interleaved) and not use_table,
        S0=s0, S1=s1, S2=s2, BLOCK_T=cfg.block_t, BLOCK_H=cfg.block_h, BLOCK_F=next_pow2(d // 2),
        Q_STEPS=-(-hq_per // cfg.block_h), K_STEPS=-(-hk_per // cfg.block_h), num_warps=cfg.num_warps)


def _launch_mrope(q, k, positions, cache, section, interleaved: bool, launch: RopeLaunch | None) -> None:
    """The table variant when the launch asks for it and the table is available, else the arithmetic one. With the
    default tile (launch=None) a failing table kernel is logged, remembered for this layout and device, and
    replaced by the arithmetic one; an explicit launch gets its error (the benchmark must time what it names)."""
    cfg = launch or spread_heads(default_launch(q.shape[2], interleaved), q.shape[0], q.shape[1])
    axis = _axis_table(q.device, section, interleaved) if cfg.axis_table else None
    if axis is None:
        _launch(q, k, cache, cache, positions, section, interleaved, replace(cfg, axis_table=False), None)
        return
    try:
        _launch(q, k, cache, cache, positions, section, interleaved, cfg, axis)
    except Exception as e:  # a compile or launch failure raises before the kernel touches q or k
        if launch is not None:
            raise
        log.warning("MRoPE axis-table kernel failed on %s (%s: %s); using the arithmetic axis map", q.device,
                    type(e).__name__, e)
        _AXIS_TABLES[(q.device, section, interleaved)] = None
        _launch(q, k, cache, cache, positions, section, interleaved, replace(cfg, axis_table=False), None)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, impl: str = "auto",
                  launch: RopeLaunch | None = None) -> None:
    """q [T, Hq, D], k [T, Hk, D], cos/sin [T, D/2]; neox (rotate-half) layout, in place."""
    _check_qk(q, k)
    t, _, d = q.shape
    for name, c in (("cos", cos), ("sin", sin)):
        check(c.shape == (t, d // 2), lambda: f"{name} must be [T, D/2] = {(t, d // 2)}, got {tuple(c.shape)}")
        check_float(name, c)
        check_last_contiguous(name, c)
    check_same_device(("q", q), ("k", k), ("cos", cos), ("sin", sin))
    if use_triton(impl, q):
        _launch(q, k, cos, sin, None, None, False, launch or vision_launch(d), None)
    else:
        reference.apply_rotary_(q, k, cos, sin)


def _check_mrope(q, positions, cos_sin_cache, mrope_section) -> tuple[int, int, int]:
    t, _, d = q.shape
    check(positions.dim() == 2 and positions.shape == (3, t), lambda: f"positions must be [3, T] = {(3, t)}, "
          f"got {tuple(positions.shape)}")
    check(positions.dtype in (torch.int64, torch.int32),
          lambda: f"positions must be int64 or int32, got {positions.dtype}")
    check(cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == d,
          lambda: f"cos_sin_cache must be [max_pos, D={d}], got {tuple(cos_sin_cache.shape)}")
    check_float("cos_sin_cache", cos_sin_cache)
    check_last_contiguous("cos_sin_cache", cos_sin_cache)
    section = tuple(int(s) for s in mrope_section)
    check(len(section) == 3 and min(section) >= 0 and sum(section) == d // 2,
          lambda: f"mrope_section must be 3 non-negative ints summing to D/2={d // 2}, got {list(section)}")
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
        _launch_mrope(q, k, positions, cos_sin_cache, section, bool(interleaved), launch)
    else:
        reference.apply_mrope_(q, k, positions, cos_sin_cache, section, interleaved)
