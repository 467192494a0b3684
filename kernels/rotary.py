"""Rotary embeddings, in place on q and k: 2D vision rope and fused 3D MRoPE (contiguous and interleaved)."""

from __future__ import annotations

import torch

from kernels import reference


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """q [T, Hq, D], k [T, Hk, D], cos/sin [T, D/2]; neox (rotate-half) layout."""
    reference.apply_rotary_(q, k, cos, sin)


def apply_mrope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                 mrope_section, interleaved: bool) -> None:
    """q [T, Hq, D], k [T, Hk, D], positions [3, T] int64, cos_sin_cache [max_pos, D] = [cos | sin]."""
    reference.apply_mrope_(q, k, positions, cos_sin_cache, mrope_section, interleaved)
