"""Gated activations: [..., 2N] = [gate | up] -> [..., N]."""

from __future__ import annotations

import torch

from kernels import reference


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return reference.silu_and_mul(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    return reference.gelu_tanh_and_mul(x)
