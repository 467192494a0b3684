"""Triton body of the ViT's qkv rotary: neox rotate-half of q and k read straight from the fused qkv projection.

src is the projection output seen as [T, 3, H, D] (strides st, sp, sh; unit stride along D), dst the same logical
tensor in the layout the attention backend wants (strides dt, dp, dh): dst == src rotates in place (q, k, v stay
strided views of the projection output), a separate [3, T, H, D] buffer writes contiguous q, k and, with COPY_V, v
(the contiguous copy fused into the rotary pass instead of three copies and an in-place rotary).

Grid: (cdiv(T, BLOCK_T), cdiv(H, BLOCK_H)). A program loads cos/sin [BLOCK_T, D/2] once (fp32), then rotates q and
k of its BLOCK_H heads: halves x1/x2 [BLOCK_T, BLOCK_H, D/2], fp32 math, one rounding to the output dtype, as
kernels.reference does. Each program reads all of its elements before it writes them, so in place is safe.
"""

import triton
import triton.language as tl


@triton.jit
def _rotate_part(src, dst, toks, tmask, heads, hmask, freqs, fmask, cos, sin, stride_st, stride_sh, stride_dt,
                 stride_dh, HALF: tl.constexpr):
    # one of q / k: [BLOCK_T, BLOCK_H, BLOCK_F] halves, rotated by cos/sin [BLOCK_T, BLOCK_F]
    m = tmask[:, None, None] & hmask[None, :, None] & fmask[None, None, :]
    ps = src + toks[:, None, None] * stride_st + heads[None, :, None] * stride_sh + freqs[None, None, :]
    pd = dst + toks[:, None, None] * stride_dt + heads[None, :, None] * stride_dh + freqs[None, None, :]
    a = tl.load(ps, mask=m, other=0.0).to(tl.float32)
    b = tl.load(ps + HALF, mask=m, other=0.0).to(tl.float32)
    c = cos[:, None, :]
    s = sin[:, None, :]
    tl.store(pd, (a * c - b * s).to(dst.dtype.element_ty), mask=m)
    tl.store(pd + HALF, (b * c + a * s).to(dst.dtype.element_ty), mask=m)


@triton.jit
def rope_qkv_kernel(src_ptr, dst_ptr, cos_ptr, sin_ptr, T, H,
                    stride_st, stride_sp, stride_sh, stride_dt, stride_dp, stride_dh, stride_cos, stride_sin,
                    HALF: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, COPY_V: tl.constexpr):
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = toks < T
    toks = toks.to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = heads < H
    freqs = tl.arange(0, BLOCK_F)
    fmask = freqs < HALF
    cm = tmask[:, None] & fmask[None, :]
    cos = tl.load(cos_ptr + toks[:, None] * stride_cos + freqs[None, :], mask=cm, other=1.0).to(tl.float32)
    sin = tl.load(sin_ptr + toks[:, None] * stride_sin + freqs[None, :], mask=cm, other=0.0).to(tl.float32)
    _rotate_part(src_ptr, dst_ptr, toks, tmask, heads, hmask, freqs, fmask, cos, sin,
                 stride_st, stride_sh, stride_dt, stride_dh, HALF)
    _rotate_part(src_ptr + stride_sp, dst_ptr + stride_dp, toks, tmask, heads, hmask, freqs, fmask, cos, sin,
                 stride_st, stride_sh, stride_dt, stride_dh, HALF)
    if COPY_V:
        cols = tl.arange(0, BLOCK_D)
        m = tmask[:, None, None] & hmask[None, :, None] & (cols < D)[None, None, :]
        off_s = toks[:, None, None] * stride_st + heads[None, :, None] * stride_sh + cols[None, None, :]
        off_d = toks[:, None, None] * stride_dt + heads[None, :, None] * stride_dh + cols[None, None, :]
        v = tl.load(src_ptr + 2 * stride_sp + off_s, mask=m, other=0.0)
        tl.store(dst_ptr + 2 * stride_dp + off_d, v, mask=m)
