"""rmsnorm, fused_add_rmsnorm, layernorm launchers."""

from __future__ import annotations

import torch

from kernels import reference


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x: [..., N], weight: [N] -> [..., N]."""
    return reference.rmsnorm(x, weight, eps)


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6):
    """Returns (rmsnorm(x + residual), x + residual)."""
    return reference.fused_add_rmsnorm(x, residual, weight, eps)


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    return reference.layernorm(x, weight, bias, eps)
