"""Seeded Gumbel-max sampling with MurmurHash3 noise of (seed, position, token id).

CUDA -> two small Triton launches (split-vocabulary scan, then a per-row reduce); CPU -> kernels.reference.
Both compute the same uint32 hash and float64 noise, so a seed gives the same token on either device and whatever
the batch around its row.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_same_device, next_pow2, use_triton

BLOCK_V = 1024
TARGET_PROGRAMS = 1024  # enough programs to fill an H200 (132 SMs) even for a batch of one


def _check(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> None:
    check(logits.dim() == 2 and logits.shape[1] > 0, lambda: f"logits must be [B, V], got {tuple(logits.shape)}")
    check(logits.is_floating_point(), lambda: f"logits must be floating point (float32 preferred), got {logits.dtype}")
    check_same_device(("logits", logits), ("seeds", seeds), ("positions", positions))
    for name, t in (("seeds", seeds), ("positions", positions)):
        check(t.shape == (logits.shape[0],), lambda: f"{name} must be [B={logits.shape[0]}], got {tuple(t.shape)}")
        check(not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
              lambda: f"{name} must be int64, got {t.dtype}")


def _split(batch: int, vocab: int) -> tuple[int, int]:
    """(blocks_per_split, n_split): the vocabulary cut into n_split chunks of blocks_per_split * BLOCK_V tokens.

    blocks_per_split is a power of two, so few kernel variants get compiled whatever the batch size.
    """
    blocks = -(-vocab // BLOCK_V)
    want = max(1, min(blocks, TARGET_PROGRAMS // max(batch, 1)))
    per_split = next_pow2(-(-blocks // want))
    return per_split, -(-blocks // per_split)


def gumbel_sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor,
                  impl: str = "auto") -> torch.Tensor:
    """logits [B, V] float32 (temperature applied, masked with -inf), seeds [B] int64, positions [B] int64
    -> [B] int64 = argmax(logits + gumbel(murmur3(seed, position, token id)))."""
    _check(logits, seeds, positions)
    if not use_triton(impl, logits):
        return reference.gumbel_sample(logits, seeds, positions)
    from kernels.triton.sampling import gumbel_partial_kernel, gumbel_reduce_kernel

    # like the reference: noise is added in float32; seeds/positions are read as int64
    logits, seeds, positions = logits.float(), seeds.to(torch.int64), positions.to(torch.int64)

    b, v = logits.shape
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    if b == 0:
        return out
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    per_split, n_split = _split(b, v)
    part_val = torch.empty((b, n_split), dtype=torch.float32, device=logits.device)
    part_idx = torch.empty((b, n_split), dtype=torch.int32, device=logits.device)
    gumbel_partial_kernel[(b, n_split)](logits, seeds.contiguous(), positions.contiguous(), part_val, part_idx, v,
                                        logits.stride(0), n_split, BLOCK_V=BLOCK_V, BLOCKS_PER_SPLIT=per_split,
                                        LIBDEVICE=logits.is_cuda, num_warps=4)
    gumbel_reduce_kernel[(b,)](part_val, part_idx, out, n_split, BLOCK_S=next_pow2(n_split), num_warps=1)
    return out
