"""fused_add_layernorm: the residual add and the next LayerNorm in one pass (the Qwen3-VL vision blocks).

RMSNorm's counterpart is kernels.norm.fused_add_rmsnorm. CUDA -> Triton (kernels/triton/add_norm.py);
CPU -> kernels.reference.fused_add_layernorm.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_same_device, next_pow2, use_triton

MAX_TRITON_N = 32768  # a row lives in registers (as kernels.norm)


def _check(x, residual, weight, bias) -> None:
    check_float("x", x)
    check_float("residual", residual)
    check(x.dim() >= 1 and x.shape[-1] > 0,
          lambda: f"x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    check(residual.shape == x.shape, lambda: f"residual must have the shape of x {tuple(x.shape)}, "
          f"got {tuple(residual.shape)}")
    check(weight.shape == (x.shape[-1],), lambda: f"weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if bias is not None:
        check(bias.shape == weight.shape,
              lambda: f"bias must have shape {tuple(weight.shape)}, got {tuple(bias.shape)}")
    named = [("x", x), ("residual", residual), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    check_same_device(*named)


def _rows(x: torch.Tensor) -> torch.Tensor:
    # [..., N] -> [M, N] with unit column stride (copies only odd layouts)
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def fused_add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        eps: float = 1e-6, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Out of place: (layernorm(x + residual), x + residual), both [..., N] in x's dtype; weight/bias [N]."""
    _check(x, residual, weight, bias)
    n = x.shape[-1]
    if not use_triton(impl, x) or n > MAX_TRITON_N:
        check(impl != "triton" or n <= MAX_TRITON_N,
              lambda: f"the Triton add+layernorm takes rows up to {MAX_TRITON_N}")
        return reference.fused_add_layernorm(x, residual, weight, bias, eps)
    from kernels.triton.add_norm import add_layernorm_kernel

    x2, r2 = _rows(x), _rows(residual)
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        block = next_pow2(n)
        add_layernorm_kernel[(x2.shape[0],)](
            x2, r2, weight, weight if bias is None else bias, out, summed, x2.stride(0), r2.stride(0),
            out.stride(0), summed.stride(0), n, eps, HAS_BIAS=bias is not None, BLOCK_N=block,
            num_warps=4 if block <= 2048 else 8 if block <= 8192 else 16)
    return out.view(x.shape), summed.view(x.shape)
