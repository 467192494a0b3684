"""Triton body of the fused per-head q/k RMSNorm + MRoPE of Qwen3-VL's text attention (launcher: kernels/qk_norm.py).

Unfused, a decode layer runs three launches here (q_norm, k_norm, the rope kernel; at T > 1 also two copies, as the
norms need rows of the strided q/k views of the qkv output). This kernel reads q and k straight from those views and
writes rotated, normalised, contiguous q and k. Program (t, j): token t, block j of BLOCK_H heads, the q blocks first
and then the k blocks. It builds the token's cos/sin [D/2] once (positions [3, T], cos_sin_cache [max_pos, D] =
[cos | sin], the axis of each frequency computed as kernels/triton/rotary.py's arithmetic variant does), loads the
halves x1/x2 [BLOCK_H, D/2] of its heads, normalises each head over D, and rotates (neox rotate-half).
Rounding follows kernels.reference: x * rstd in x's dtype, times the weight in the output dtype, rotated in fp32,
rounded to the output dtype.
"""

import triton
import triton.language as tl

from kernels.triton.rotary import _mrope_axis


@triton.jit
def _norm_rope_heads(x_ptr, out_ptr, w_ptr, t, h0, n_heads, stride_t, stride_h, eps, cos, sin, freqs, fmask,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = h0 + tl.arange(0, BLOCK_H)
    m = (heads < n_heads)[:, None] & fmask[None, :]
    p = x_ptr + t * stride_t + heads[:, None].to(tl.int64) * stride_h + freqs[None, :]
    x1 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(p + HALF, mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)
    in_dtype = x_ptr.dtype.element_ty
    dtype = out_ptr.dtype.element_ty
    w1 = tl.load(w_ptr + freqs, mask=fmask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + HALF + freqs, mask=fmask, other=0.0).to(tl.float32)[None, :]
    y1 = ((x1 * rstd[:, None]).to(in_dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    y2 = ((x2 * rstd[:, None]).to(in_dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    c = cos[None, :]
    s = sin[None, :]
    o = out_ptr + (t * n_heads + heads[:, None].to(tl.int64)) * (2 * HALF) + freqs[None, :]  # contiguous out
    tl.store(o, (y1 * c - y2 * s).to(dtype), mask=m)
    tl.store(o + HALF, (y2 * c + y1 * s).to(dtype), mask=m)


@triton.jit
def qk_norm_mrope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, qw_ptr, kw_ptr, pos_ptr, cache_ptr, Hq, Hk,
                         stride_qt, stride_qh, stride_kt, stride_kh, stride_pa, stride_pt, stride_cache, eps,
                         HALF: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_H: tl.constexpr,
                         S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    """q [T, Hq, D], k [T, Hk, D] (any token / head strides, unit last stride) -> qo [T, Hq, D], ko [T, Hk, D]
    contiguous. Grid: (T, cdiv(Hq, BLOCK_H) + cdiv(Hk, BLOCK_H))."""
    t = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    freqs = tl.arange(0, BLOCK_F)
    fmask = freqs < HALF
    p_t = tl.load(pos_ptr + t * stride_pt)
    p_h = tl.load(pos_ptr + stride_pa + t * stride_pt)
    p_w = tl.load(pos_ptr + 2 * stride_pa + t * stride_pt)
    axis = _mrope_axis(freqs, S0, S1, S2, INTERLEAVED)
    pos = tl.where(axis == 0, p_t, tl.where(axis == 1, p_h, p_w)).to(tl.int64)
    row = cache_ptr + pos * stride_cache + freqs
    cos = tl.load(row, mask=fmask, other=1.0).to(tl.float32)
    sin = tl.load(row + HALF, mask=fmask, other=0.0).to(tl.float32)
    q_blocks = tl.cdiv(Hq, BLOCK_H)
    if j < q_blocks:
        _norm_rope_heads(q_ptr, qo_ptr, qw_ptr, t, j * BLOCK_H, Hq, stride_qt, stride_qh, eps, cos, sin, freqs,
                         fmask, HALF, BLOCK_H)
    else:
        _norm_rope_heads(k_ptr, ko_ptr, kw_ptr, t, (j - q_blocks) * BLOCK_H, Hk, stride_kt, stride_kh, eps, cos,
                         sin, freqs, fmask, HALF, BLOCK_H)
