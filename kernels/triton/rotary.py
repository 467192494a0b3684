"""Triton body of the fused rotary kernel: neox rotate-half, in place on q [T, Hq, D] and k [T, Hk, D] in one launch.

Grid: (cdiv(T, BLOCK_T), cdiv(Hq, BLOCK_H) + cdiv(Hk, BLOCK_H)). A program takes a block of tokens and a block of
heads (q blocks first, then k blocks), builds cos/sin [BLOCK_T, D/2] once, rotates the [BLOCK_T, BLOCK_H, D/2]
halves in registers (fp32) and writes them back in the input dtype.
cos/sin come either straight from [T, D/2] tensors (2D vision rope) or, for MRoPE, from positions [3, T] and a
cos_sin_cache [max_pos, D] = [cos | sin]: frequency i uses the position of axis(i) (t, h or w), where axis() is the
contiguous (Qwen2.5-VL) or interleaved (Qwen3-VL) section map of kernels.reference.mrope_axis_map.
"""

import triton
import triton.language as tl


@triton.jit
def _mrope_axis(freqs, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    # freqs: [BLOCK_F] -> axis 0/1/2 per frequency
    if INTERLEAVED:
        m3 = freqs % 3
        axis = tl.where((m3 == 1) & (freqs < 3 * S1), 1, tl.where((m3 == 2) & (freqs < 3 * S2), 2, 0))
    else:
        axis = (freqs >= S0).to(tl.int32) + (freqs >= S0 + S1).to(tl.int32)
    return axis


@triton.jit
def _mrope_cos_sin(pos_ptr, stride_pa, stride_pt, cache_ptr, stride_cache, toks, tmask, freqs, fmask, half,
                   S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    # the three position rows [BLOCK_T], then the per-frequency pick -> pos [BLOCK_T, BLOCK_F]
    p_t = tl.load(pos_ptr + toks * stride_pt, mask=tmask, other=0)
    p_h = tl.load(pos_ptr + stride_pa + toks * stride_pt, mask=tmask, other=0)
    p_w = tl.load(pos_ptr + 2 * stride_pa + toks * stride_pt, mask=tmask, other=0)
    axis = _mrope_axis(freqs, S0, S1, S2, INTERLEAVED)[None, :]
    pos = tl.where(axis == 0, p_t[:, None], tl.where(axis == 1, p_h[:, None], p_w[:, None])).to(tl.int64)
    m = tmask[:, None] & fmask[None, :]
    row = cache_ptr + pos * stride_cache + freqs[None, :]
    cos = tl.load(row, mask=m, other=1.0).to(tl.float32)
    sin = tl.load(row + half, mask=m, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _rotate_heads(x_ptr, stride_t, stride_h, n_heads, h0, toks, tmask, freqs, fmask, cos, sin, half,
                  BLOCK_H: tl.constexpr):
    # x halves [BLOCK_T, BLOCK_H, BLOCK_F]; cos/sin [BLOCK_T, BLOCK_F] broadcast over heads
    heads = h0 + tl.arange(0, BLOCK_H)
    m = tmask[:, None, None] & (heads < n_heads)[None, :, None] & fmask[None, None, :]
    p = x_ptr + toks[:, None, None] * stride_t + heads[None, :, None] * stride_h + freqs[None, None, :]
    x1 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(p + half, mask=m, other=0.0).to(tl.float32)
    c = cos[:, None, :]
    s = sin[:, None, :]
    tl.store(p, (x1 * c - x2 * s).to(x_ptr.dtype.element_ty), mask=m)
    tl.store(p + half, (x2 * c + x1 * s).to(x_ptr.dtype.element_ty), mask=m)


@triton.jit
def rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, T, Hq, Hk, half,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin, stride_pa, stride_pt,
                USE_POS: tl.constexpr, INTERLEAVED: tl.constexpr,
                S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr):
    # USE_POS: cos_ptr is the cos_sin_cache (row stride stride_cos) and pos_ptr the [3, T] positions
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = toks < T
    toks = toks.to(tl.int64)
    freqs = tl.arange(0, BLOCK_F)
    fmask = freqs < half
    if USE_POS:
        cos, sin = _mrope_cos_sin(pos_ptr, stride_pa, stride_pt, cos_ptr, stride_cos, toks, tmask, freqs, fmask,
                                  half, S0, S1, S2, INTERLEAVED)
    else:
        m = tmask[:, None] & fmask[None, :]
        cos = tl.load(cos_ptr + toks[:, None] * stride_cos + freqs[None, :], mask=m, other=1.0).to(tl.float32)
        sin = tl.load(sin_ptr + toks[:, None] * stride_sin + freqs[None, :], mask=m, other=0.0).to(tl.float32)
    hb = tl.program_id(1)
    n_qb = tl.cdiv(Hq, BLOCK_H)
    if hb < n_qb:
        _rotate_heads(q_ptr, stride_qt, stride_qh, Hq, hb * BLOCK_H, toks, tmask, freqs, fmask, cos, sin, half,
                      BLOCK_H)
    else:
        _rotate_heads(k_ptr, stride_kt, stride_kh, Hk, (hb - n_qb) * BLOCK_H, toks, tmask, freqs, fmask, cos, sin,
                      half, BLOCK_H)
