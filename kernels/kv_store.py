"""Store new k/v into the paged KV cache [num_blocks, 2, block_size, Hk, D] (FlashInfer's NHD layout).

CUDA -> Triton scatter (kernels/triton/kv_store.py); CPU -> kernels.reference.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_last_contiguous, check_same_device, next_pow2, use_triton


def check_inputs(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    check(k.dim() == 3 and k.shape == v.shape,
          lambda: f"k and v must be [T, Hk, D] of one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    check(kv_cache.dim() == 5 and kv_cache.shape[1] == 2 and tuple(kv_cache.shape[3:]) == tuple(k.shape[1:]),
          lambda: f"kv_cache must be [num_blocks, 2, block_size, {k.shape[1]}, {k.shape[2]}], "
                  f"got {tuple(kv_cache.shape)}")
    check(slot_mapping.shape == (k.shape[0],), lambda: f"slot_mapping must be [T={k.shape[0]}], "
          f"got {tuple(slot_mapping.shape)}")
    check(slot_mapping.dtype in (torch.int64, torch.int32),
          lambda: f"slot_mapping must be int64, got {slot_mapping.dtype}")
    check_float("k", k)
    check_float("kv_cache", kv_cache)
    for name, t in (("k", k), ("v", v), ("kv_cache", kv_cache)):
        check_last_contiguous(name, t)
    check_same_device(("k", k), ("v", v), ("kv_cache", kv_cache), ("slot_mapping", slot_mapping))


def store_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
             impl: str = "auto") -> None:
    """Write k, v [T, Hk, D] into kv_cache at flat slots [T] (block * block_size + offset); slot < 0 skips the token.

    Slots must be < num_blocks * block_size; the CUDA path does not check them (that would cost a sync).
    """
    check_inputs(k, v, kv_cache, slot_mapping)
    if not use_triton(impl, k):
        reference.store_kv(k, v, kv_cache, slot_mapping)
        return
    from kernels.triton.kv_store import store_kv_kernel

    t, hk, d = k.shape
    if t == 0:
        return
    block_h = max(1, min(next_pow2(hk), 4096 // next_pow2(d)))
    store_kv_kernel[(t, -(-hk // block_h))](
        k, v, kv_cache, slot_mapping.contiguous(), hk, d, kv_cache.shape[2],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        BLOCK_H=block_h, BLOCK_D=next_pow2(d), num_warps=4)
