"""Seeded Gumbel-max sampling with MurmurHash3 noise of (seed, position, token id)."""

from __future__ import annotations

import torch

from kernels import reference


def gumbel_sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (temperature applied, masked with -inf), seeds [B] int64, positions [B] int64 -> [B] int64."""
    return reference.gumbel_sample(logits, seeds, positions)
