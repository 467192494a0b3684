"""Triton body of the fused per-head q/k RMSNorm + MRoPE of Qwen3-VL's text attention (launcher: kernels/qk_norm.py).

Unfused, a decode layer runs three launches here (q_norm, k_norm, the rope kernel; at T > 1 also two copies, as the
norms need rows of the strided q/k views of the qkv output). This kernel reads q and k straight from those views and
writes rotated, normalised, contiguous q and k. Program (t, j): token t, block j of BLOCK_H heads, the q blocks first
and then the k blocks. It builds the token's cos/sin [D/2] once (positions [3, T], cos_sin_cache [max_pos, D] =
[cos | sin], the axis of each frequency computed as kernels/triton/rotary.py's arithmetic variant does), loads the
halves x1/x2 [BLOCK_H, D/2] of its heads, normalises each head over D, and rotates (neox rotate-half).
qk_norm_mrope_store_kernel does the same for q and writes k and v into the paged KV cache instead of ko (the store
kernels/triton/kv_store.py would do next), one launch fewer per layer.
Rounding follows kernels.reference: x * rstd in x's dtype, times the weight in the output dtype, rotated in fp32,
rounded to the output dtype.
"""

import triton
import triton.language as tl

from kernels.triton.rotary import _mrope_axis


@triton.jit
def _norm_rope(x_ptr, w_ptr, t, heads, m, stride_t, stride_h, eps, cos, sin, freqs, fmask, dtype: tl.constexpr,
               HALF: tl.constexpr):
    """The two rotated halves [BLOCK_H, HALF] of `heads` of token t, normalised, in fp32 holding `dtype` values."""
    p = x_ptr + t * stride_t + heads[:, None].to(tl.int64) * stride_h + freqs[None, :]
    x1 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(p + HALF, mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)
    in_dtype = x_ptr.dtype.element_ty
    w1 = tl.load(w_ptr + freqs, mask=fmask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + HALF + freqs, mask=fmask, other=0.0).to(tl.float32)[None, :]
    y1 = ((x1 * rstd[:, None]).to(in_dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    y2 = ((x2 * rstd[:, None]).to(in_dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    c = cos[None, :]
    s = sin[None, :]
    return (y1 * c - y2 * s).to(dtype), (y2 * c + y1 * s).to(dtype)


@triton.jit
def _norm_rope_heads(x_ptr, out_ptr, w_ptr, t, h0, n_heads, stride_t, stride_h, eps, cos, sin, freqs, fmask,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = h0 + tl.arange(0, BLOCK_H)
    m = (heads < n_heads)[:, None] & fmask[None, :]
    r1, r2 = _norm_rope(x_ptr, w_ptr, t, heads, m, stride_t, stride_h, eps, cos, sin, freqs, fmask,
                        out_ptr.dtype.element_ty, HALF)
    o = out_ptr + (t * n_heads + heads[:, None].to(tl.int64)) * (2 * HALF) + freqs[None, :]  # contiguous out
    tl.store(o, r1, mask=m)
    tl.store(o + HALF, r2, mask=m)


@triton.jit
def _norm_rope_store_kv(k_ptr, v_ptr, kw_ptr, cache_ptr, slot, t, h0, Hk, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_cb, stride_ckv, stride_cs, stride_ch, block_size, eps, cos, sin, freqs, fmask,
                        k_dtype: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """k heads normalised and rotated as _norm_rope_heads would write them (in k_dtype), then, with v's heads,
    written into the paged cache at `slot` (kernels/triton/kv_store.py's layout and casts)."""
    heads = h0 + tl.arange(0, BLOCK_H)
    m = (heads < Hk)[:, None] & fmask[None, :]
    r1, r2 = _norm_rope(k_ptr, kw_ptr, t, heads, m, stride_kt, stride_kh, eps, cos, sin, freqs, fmask, k_dtype, HALF)
    c_dtype = cache_ptr.dtype.element_ty
    dst = (cache_ptr + (slot // block_size) * stride_cb + (slot % block_size) * stride_cs
           + heads[:, None].to(tl.int64) * stride_ch + freqs[None, :])
    tl.store(dst, r1.to(c_dtype), mask=m)
    tl.store(dst + HALF, r2.to(c_dtype), mask=m)
    pv = v_ptr + t * stride_vt + heads[:, None].to(tl.int64) * stride_vh + freqs[None, :]
    tl.store(dst + stride_ckv, tl.load(pv, mask=m).to(c_dtype), mask=m)
    tl.store(dst + stride_ckv + HALF, tl.load(pv + HALF, mask=m).to(c_dtype), mask=m)


@triton.jit
def _token_cos_sin(pos_ptr, cache_ptr, t, stride_pa, stride_pt, stride_cache, freqs, fmask, HALF: tl.constexpr,
                   S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    p_t = tl.load(pos_ptr + t * stride_pt)
    p_h = tl.load(pos_ptr + stride_pa + t * stride_pt)
    p_w = tl.load(pos_ptr + 2 * stride_pa + t * stride_pt)
    axis = _mrope_axis(freqs, S0, S1, S2, INTERLEAVED)
    pos = tl.where(axis == 0, p_t, tl.where(axis == 1, p_h, p_w)).to(tl.int64)
    row = cache_ptr + pos * stride_cache + freqs
    cos = tl.load(row, mask=fmask, other=1.0).to(tl.float32)
    sin = tl.load(row + HALF, mask=fmask, other=0.0).to(tl.float32)
    return cos, sin


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
    cos, sin = _token_cos_sin(pos_ptr, cache_ptr, t, stride_pa, stride_pt, stride_cache, freqs, fmask, HALF,
                              S0, S1, S2, INTERLEAVED)
    q_blocks = tl.cdiv(Hq, BLOCK_H)
    if j < q_blocks:
        _norm_rope_heads(q_ptr, qo_ptr, qw_ptr, t, j * BLOCK_H, Hq, stride_qt, stride_qh, eps, cos, sin, freqs,
                         fmask, HALF, BLOCK_H)
    else:
        _norm_rope_heads(k_ptr, ko_ptr, kw_ptr, t, (j - q_blocks) * BLOCK_H, Hk, stride_kt, stride_kh, eps, cos,
                         sin, freqs, fmask, HALF, BLOCK_H)


@triton.jit
def qk_norm_mrope_store_kernel(q_ptr, k_ptr, v_ptr, qo_ptr, qw_ptr, kw_ptr, pos_ptr, cache_ptr, kv_ptr, slot_ptr,
                               Hq, Hk, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                               stride_pa, stride_pt, stride_cache, stride_cb, stride_ckv, stride_cs, stride_ch,
                               block_size, eps, k_dtype: tl.constexpr,
                               HALF: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_H: tl.constexpr,
                               S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    """As qk_norm_mrope_kernel for q; k (normalised, rotated) and v go straight into the paged KV cache kv_ptr
    [num_blocks, 2, block_size, Hk, D] at slot_ptr[t] (a negative slot stores nothing: CUDA-graph padding)."""
    t = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    freqs = tl.arange(0, BLOCK_F)
    fmask = freqs < HALF
    q_blocks = tl.cdiv(Hq, BLOCK_H)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if (j < q_blocks) | (slot >= 0):
        cos, sin = _token_cos_sin(pos_ptr, cache_ptr, t, stride_pa, stride_pt, stride_cache, freqs, fmask, HALF,
                                  S0, S1, S2, INTERLEAVED)
        if j < q_blocks:
            _norm_rope_heads(q_ptr, qo_ptr, qw_ptr, t, j * BLOCK_H, Hq, stride_qt, stride_qh, eps, cos, sin,
                             freqs, fmask, HALF, BLOCK_H)
        else:
            _norm_rope_store_kv(k_ptr, v_ptr, kw_ptr, kv_ptr, slot, t, (j - q_blocks) * BLOCK_H, Hk, stride_kt,
                                stride_kh, stride_vt, stride_vh, stride_cb, stride_ckv, stride_cs, stride_ch,
                                block_size, eps, cos, sin, freqs, fmask, k_dtype, HALF, BLOCK_H)
