"""Gated activations: [..., 2N] = [gate | up] -> [..., N]. CUDA -> Triton, CPU -> kernels.reference."""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, use_triton

BLOCK = 1024


def _check(x: torch.Tensor) -> None:
    check_float("x", x)
    check(x.dim() >= 1 and x.shape[-1] % 2 == 0,
          lambda: f"x must be [..., 2N] = [gate | up] with an even last dimension, got shape {tuple(x.shape)}")


def _launch(x: torch.Tensor, act: str) -> torch.Tensor:
    from kernels.triton.activation import gated_act_kernel

    n = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    if out.numel():
        grid = (x2.shape[0], -(-n // BLOCK))
        gated_act_kernel[grid](x2, out, x2.stride(0), out.stride(0), n, ACT=act, BLOCK=BLOCK, num_warps=4)
    return out.view(*x.shape[:-1], n)


def silu_and_mul(x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """silu(gate) * up for x [..., 2N] -> [..., N] in x's dtype."""
    _check(x)
    return _launch(x, "silu") if use_triton(impl, x) else reference.silu_and_mul(x)


def gelu_tanh_and_mul(x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """gelu_tanh(gate) * up for x [..., 2N] -> [..., N] in x's dtype."""
    _check(x)
    return _launch(x, "gelu_tanh") if use_triton(impl, x) else reference.gelu_tanh_and_mul(x)
