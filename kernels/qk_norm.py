"""Fused per-head q/k RMSNorm + MRoPE (Qwen3-VL text attention): one launch instead of q_norm, k_norm and the
rope kernel (and, at T > 1, the two copies the norms need). CUDA -> kernels/triton/qk_norm_rope.py; CPU ->
kernels.reference.qk_norm_mrope (the unfused composition, also the tests' oracle)."""

from __future__ import annotations

import torch

from kernels import kv_store, reference
from kernels._dispatch import check, check_float, check_same_device, next_pow2, use_triton
from kernels.rotary import _check_mrope, _check_qk


def _check(q, k, q_weight, k_weight, positions, cos_sin_cache, mrope_section, block_h: int) -> tuple[int, int, int]:
    """Both launchers' input checks; returns the validated mrope section."""
    _check_qk(q, k)
    section = _check_mrope(q, positions, cos_sin_cache, mrope_section)
    d = q.shape[2]
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        check(w.shape == (d,), lambda: f"{name} must have shape ({d},), got {tuple(w.shape)}")
        check_float(name, w)
    check(block_h >= 1 and block_h & (block_h - 1) == 0, lambda: f"block_h must be a power of two, got {block_h}")
    check_same_device(("q", q), ("k", k), ("q_weight", q_weight), ("k_weight", k_weight),
                      ("positions", positions), ("cos_sin_cache", cos_sin_cache))
    return section


def qk_norm_mrope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                  positions: torch.Tensor, cos_sin_cache: torch.Tensor, mrope_section, interleaved: bool,
                  impl: str = "auto", block_h: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Out of place: (mrope(rmsnorm(q, q_weight)), mrope(rmsnorm(k, k_weight))), both contiguous.

    q [T, Hq, D], k [T, Hk, D] may be strided views (e.g. of a fused qkv output; unit last stride); weights [D];
    positions [3, T]; cos_sin_cache [max_pos, D] = [cos | sin]. Outputs in the promoted dtype of q and the weights.
    Positions must lie in [0, max_pos); the CUDA path does not check them (that would cost a sync)."""
    section = _check(q, k, q_weight, k_weight, positions, cos_sin_cache, mrope_section, block_h)
    d = q.shape[2]
    if not use_triton(impl, q):
        return reference.qk_norm_mrope(q, k, q_weight, k_weight, eps, positions, cos_sin_cache, section,
                                       interleaved)
    from kernels.triton.qk_norm_rope import qk_norm_mrope_kernel

    t, hq, _ = q.shape
    hk = k.shape[1]
    qo = torch.empty(t, hq, d, dtype=torch.promote_types(q.dtype, q_weight.dtype), device=q.device)
    ko = torch.empty(t, hk, d, dtype=torch.promote_types(k.dtype, k_weight.dtype), device=q.device)
    if t:
        grid = (t, -(-hq // block_h) + -(-hk // block_h))
        qk_norm_mrope_kernel[grid](
            q, k, qo, ko, q_weight, k_weight, positions, cos_sin_cache, hq, hk, q.stride(0), q.stride(1),
            k.stride(0), k.stride(1), positions.stride(0), positions.stride(1), cos_sin_cache.stride(0), eps,
            HALF=d // 2, BLOCK_F=next_pow2(d // 2), BLOCK_H=block_h, S0=section[0], S1=section[1], S2=section[2],
            INTERLEAVED=bool(interleaved), num_warps=4)
    return qo, ko


def qk_norm_mrope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
                        k_weight: torch.Tensor, eps: float, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                        mrope_section, interleaved: bool, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                        impl: str = "auto", block_h: int = 4) -> torch.Tensor:
    """qk_norm_mrope with kernels.store_kv folded in: returns q (normalised, rotated, contiguous [T, Hq, D]) and
    writes k (normalised, rotated) and v [T, Hk, D] into kv_cache [num_blocks, 2, block_size, Hk, D] at the flat
    slots [T] (a negative slot stores nothing). One launch where the unfused pair takes two; the values are
    exactly those of qk_norm_mrope then store_kv."""
    section = _check(q, k, q_weight, k_weight, positions, cos_sin_cache, mrope_section, block_h)
    d = q.shape[2]
    kv_store.check_inputs(k, v, kv_cache, slot_mapping)
    if not use_triton(impl, q):
        qo, ko = reference.qk_norm_mrope(q, k, q_weight, k_weight, eps, positions, cos_sin_cache, section,
                                         interleaved)
        reference.store_kv(ko, v, kv_cache, slot_mapping)
        return qo
    import triton.language as tl

    from kernels.triton.qk_norm_rope import qk_norm_mrope_store_kernel

    t, hq, _ = q.shape
    hk = k.shape[1]
    qo = torch.empty(t, hq, d, dtype=torch.promote_types(q.dtype, q_weight.dtype), device=q.device)
    k_dtype = torch.promote_types(k.dtype, k_weight.dtype)
    if t:
        grid = (t, -(-hq // block_h) + -(-hk // block_h))
        c = kv_cache
        qk_norm_mrope_store_kernel[grid](
            q, k, v, qo, q_weight, k_weight, positions, cos_sin_cache, c, slot_mapping.contiguous(), hq, hk,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), positions.stride(0),
            positions.stride(1), cos_sin_cache.stride(0), c.stride(0), c.stride(1), c.stride(2), c.stride(3),
            c.shape[2], eps, k_dtype=getattr(tl, str(k_dtype).removeprefix("torch.")), HALF=d // 2,
            BLOCK_F=next_pow2(d // 2), BLOCK_H=block_h, S0=section[0], S1=section[1], S2=section[2],
            INTERLEAVED=bool(interleaved), num_warps=4)
    return qo
