"""Triton body of store_kv: scatter k, v [T, Hk, D] into kv_cache [num_blocks, 2, block_size, Hk, D].

Grid: (T, cdiv(Hk, BLOCK_H)). A negative slot means "do not store" (padding tokens, e.g. under CUDA graphs).
"""

import triton
import triton.language as tl


@triton.jit
def store_kv_kernel(k_ptr, v_ptr, cache_ptr, slot_ptr, Hk, D, block_size,
                    stride_kt, stride_kh, stride_vt, stride_vh,
                    stride_cb, stride_ckv, stride_cs, stride_ch,
                    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_D)
        m = (heads < Hk)[:, None] & (dims < D)[None, :]
        dst = (cache_ptr + (slot // block_size) * stride_cb + (slot % block_size) * stride_cs
               + heads[:, None] * stride_ch + dims[None, :])
        k = tl.load(k_ptr + t * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=m)
        tl.store(dst, k.to(cache_ptr.dtype.element_ty), mask=m)
        v = tl.load(v_ptr + t * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=m)
        tl.store(dst + stride_ckv, v.to(cache_ptr.dtype.element_ty), mask=m)
