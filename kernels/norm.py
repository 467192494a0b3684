"""rmsnorm, fused_add_rmsnorm and layernorm launchers.

CUDA -> Triton (or FlashInfer's JIT norms with impl="flashinfer"); CPU -> kernels.reference.
`impl` is "auto" | "triton" | "reference" | "flashinfer" (see kernels._dispatch).
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_same_device, next_pow2, use_triton

MAX_TRITON_N = 32768  # a row lives in registers; wider rows go to the reference
# The "auto" choice on CUDA, set from benchmarks/bench_kernels.py measurements on the H200 (Triton vs FlashInfer JIT).
AUTO_CUDA_NORM = "triton"


def _check_norm_inputs(x: torch.Tensor, weight: torch.Tensor, *others: tuple[str, torch.Tensor]) -> None:
    check_float("x", x)
    check(x.dim() >= 1 and x.shape[-1] > 0,
          lambda: f"x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    check(weight.shape == (x.shape[-1],), lambda: f"weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    for name, t in others:
        check(t.shape == x.shape, lambda: f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
        check_float(name, t)
    check_same_device(("x", x), ("weight", weight), *others)


def _resolve(impl: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """Map impl to "triton" | "reference" | "flashinfer" for these inputs."""
    if impl == "flashinfer":
        check(x.is_cuda, "impl='flashinfer' needs CUDA tensors")
        check(weight.dtype == x.dtype, "impl='flashinfer' needs weight in the dtype of x")
        return impl
    if impl == "auto" and x.is_cuda and AUTO_CUDA_NORM == "flashinfer":
        return "flashinfer"
    if use_triton(impl, x):
        check(x.shape[-1] <= MAX_TRITON_N or impl == "auto", lambda: f"Triton norms take rows up to {MAX_TRITON_N}")
        return "triton" if x.shape[-1] <= MAX_TRITON_N else "reference"
    return "reference"


def _rows(x: torch.Tensor) -> torch.Tensor:
    # [..., N] -> [M, N] with unit column stride (copies only odd layouts)
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch_config(n: int) -> dict:
    block = next_pow2(n)
    return {"BLOCK_N": block, "num_warps": 4 if block <= 2048 else 8 if block <= 8192 else 16}


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, impl: str = "auto") -> torch.Tensor:
    """x: [..., N], weight: [N] -> [..., N] in the promoted dtype of x and weight."""
    _check_norm_inputs(x, weight)
    path = _resolve(impl, x, weight)
    if path == "reference":
        return reference.rmsnorm(x, weight, eps)
    if path == "flashinfer":
        from kernels import jit
        return jit.flashinfer_norm().rmsnorm(_rows(x), weight, eps).view(x.shape)
    from kernels.triton.norm import rmsnorm_kernel

    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if x2.shape[0]:
        rmsnorm_kernel[(x2.shape[0],)](x2, weight, out, x2.stride(0), out.stride(0), x2.shape[1], eps,
                                       **_launch_config(x2.shape[1]))
    return out.view(x.shape)


def _fused_add_launch(x2, r2, weight, out, summed, eps) -> None:
    from kernels.triton.norm import fused_add_rmsnorm_kernel

    if x2.shape[0]:
        fused_add_rmsnorm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, summed, x2.stride(0), r2.stride(0), out.stride(0), summed.stride(0),
            x2.shape[1], eps, **_launch_config(x2.shape[1]))


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Out of place: returns (rmsnorm(x + residual), x + residual); x, residual: [..., N], weight: [N]."""
    _check_norm_inputs(x, weight, ("residual", residual))
    path = _resolve(impl, x, weight)
    if path == "reference":
        return reference.fused_add_rmsnorm(x, residual, weight, eps)
    if path == "flashinfer":
        normed, summed = x.clone(), residual.clone()
        fused_add_rmsnorm_(normed, summed, weight, eps, impl="flashinfer")
        return normed, summed
    x2, r2 = _rows(x), _rows(residual)
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    summed = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    _fused_add_launch(x2, r2, weight, out, summed, eps)
    return out.view(x.shape), summed.view(x.shape)


def fused_add_rmsnorm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                       impl: str = "auto") -> None:
    """In place, FlashInfer's convention: residual <- x + residual; x <- rmsnorm(residual) (in x's dtype).

    x and residual must be contiguous [..., N] of one dtype.
    """
    _check_norm_inputs(x, weight, ("residual", residual))
    check(x.is_contiguous() and residual.is_contiguous(), "x and residual must be contiguous for the in-place op")
    check(x.dtype == residual.dtype,
          lambda: f"x and residual must share a dtype in place, got {x.dtype} and {residual.dtype}")
    path = _resolve(impl, x, weight)
    if path == "reference":
        normed, summed = reference.fused_add_rmsnorm(x, residual, weight, eps)
        residual.copy_(summed)
        x.copy_(normed)
    elif path == "flashinfer":
        from kernels import jit
        jit.flashinfer_norm().fused_add_rmsnorm(_rows(x), _rows(residual), weight, eps)
    else:
        x2, r2 = _rows(x), _rows(residual)
        _fused_add_launch(x2, r2, weight, x2, r2, eps)


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-6,
              impl: str = "auto") -> torch.Tensor:
    """x: [..., N], weight/bias: [N] (bias may be None) -> [..., N] in x's dtype."""
    _check_norm_inputs(x, weight)
    if bias is not None:
        check(bias.shape == weight.shape,
              lambda: f"bias must have shape {tuple(weight.shape)}, got {tuple(bias.shape)}")
    path = _resolve("auto" if impl == "flashinfer" else impl, x, weight)
    if path == "reference":
        return reference.layernorm(x, weight, bias, eps)
    from kernels.triton.norm import layernorm_kernel

    x2 = _rows(x)
    out = torch.empty_like(x2)
    if x2.shape[0]:
        layernorm_kernel[(x2.shape[0],)](x2, weight, weight if bias is None else bias, out, x2.stride(0),
                                         out.stride(0), x2.shape[1], eps, HAS_BIAS=bias is not None,
                                         **_launch_config(x2.shape[1]))
    return out.view(x.shape)
