"""Fused sparse-MoE op (Qwen3-VL-MoE text layers): routing, then the experts' gated MLPs weighted by the router.

Weights are in the nn.Linear layout, one stack per expert: w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I].
CUDA -> the Triton path (kernels/triton/moe.py); CPU -> kernels.reference (a loop over experts), the tests' oracle.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_same_device, use_triton


def _check(x: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int) -> None:
    check_float("x", x)
    check_same_device(("x", x), ("router_logits", router_logits), ("w13", w13), ("w2", w2))
    check(x.dim() == 2 and router_logits.dim() == 2 and router_logits.shape[0] == x.shape[0],
          f"x must be [T, H] and router_logits [T, E], got {tuple(x.shape)} and {tuple(router_logits.shape)}")
    e, two_i, h = w13.shape
    check(h == x.shape[1] and two_i % 2 == 0 and e == router_logits.shape[1],
          f"w13 must be [E, 2I, H] = [{router_logits.shape[1]}, 2I, {x.shape[1]}], got {tuple(w13.shape)}")
    check(tuple(w2.shape) == (e, h, two_i // 2), f"w2 must be [E, H, I] = [{e}, {h}, {two_i // 2}], got {tuple(w2.shape)}")
    check(1 <= top_k <= e, f"top_k must be in [1, {e}], got {top_k}")
    check(w13.dtype == x.dtype and w2.dtype == x.dtype, "x, w13 and w2 must share a dtype")


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True,
              impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] float32, expert ids [T, k] int32): softmax, top-k, renormalise."""
    return reference.moe_route(router_logits, top_k, renormalize)


def fused_moe(x: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int,
              renormalize: bool = True, impl: str = "auto") -> torch.Tensor:
    """x [T, H], router_logits [T, E] -> [T, H] in x's dtype: sum over the k picks of weight * expert MLP(x)."""
    _check(x, router_logits, w13, w2, top_k)
    use_triton(impl, x)  # validates impl; the Triton path (kernels/triton/moe.py) is not written yet
    weights, ids = reference.moe_route(router_logits, top_k, renormalize)
    return reference.fused_moe(x, w13, w2, weights, ids)
