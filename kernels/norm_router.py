"""fused_add_rmsnorm_router: the post-attention add + RMSNorm and the MoE router's linear in one launch for few rows
(decode), kernels/triton/norm_router.py; more rows, or impl="reference" / CPU: the unfused ops."""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_same_device, next_pow2, use_triton
from kernels.norm import MAX_TRITON_N, _check_norm_inputs, fused_add_rmsnorm

FUSED_MAX_ROWS = 16  # each program re-reads its row and its 16 KB of router rows: for more rows (an unmeasured
# guess: 16) the unfused norm + cuBLAS GEMM is expected to be cheaper
ROUTER_BLOCK_E = 4  # experts per program: E=128 -> 32 programs per row, 16 KB of router weights each (bf16)


def fused_add_rmsnorm_router(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                             router_weight: torch.Tensor, impl: str = "auto"
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual [T, H], weight [H], router_weight [E, H] -> (normed = rmsnorm(x + residual) [T, H],
    summed = x + residual [T, H], logits = normed @ router_weight.T [T, E] in normed's dtype)."""
    _check_norm_inputs(x, weight, ("residual", residual))
    check(x.dim() == 2, lambda: f"x must be [T, H], got {tuple(x.shape)}")
    check(router_weight.dim() == 2 and router_weight.shape[1] == x.shape[1],
          lambda: f"router_weight must be [E, {x.shape[1]}], got {tuple(router_weight.shape)}")
    check_same_device(("x", x), ("router_weight", router_weight))
    if not use_triton(impl, x):
        return reference.fused_add_rmsnorm_router(x, residual, weight, eps, router_weight)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    fusable = (x.shape[0] <= FUSED_MAX_ROWS and x.shape[1] <= MAX_TRITON_N and router_weight.dtype == out_dtype
               and x.stride(-1) == 1 and residual.stride(-1) == 1 and router_weight.stride(-1) == 1)
    if not fusable:
        normed, summed = fused_add_rmsnorm(x, residual, weight, eps, impl=impl)
        return normed, summed, torch.nn.functional.linear(normed, router_weight)
    from kernels.triton.norm_router import add_rmsnorm_router_kernel

    t, h = x.shape
    e = router_weight.shape[0]
    normed = torch.empty(t, h, dtype=out_dtype, device=x.device)
    summed = torch.empty(t, h, dtype=x.dtype, device=x.device)
    logits = torch.empty(t, e, dtype=out_dtype, device=x.device)
    if t:
        block_n = next_pow2(h)
        add_rmsnorm_router_kernel[(t, -(-e // ROUTER_BLOCK_E))](
            x, residual, weight, router_weight, normed, summed, logits, x.stride(0), residual.stride(0),
            normed.stride(0), summed.stride(0), router_weight.stride(0), logits.stride(0), h, e, eps,
            BLOCK_N=block_n, BLOCK_E=ROUTER_BLOCK_E, num_warps=8 if block_n * ROUTER_BLOCK_E > 4096 else 4)
    return normed, summed, logits
