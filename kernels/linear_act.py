"""linear_gelu_tanh: a linear layer with its tanh-GELU fused into the matmul (the Qwen3-VL vision MLP's fc1).

On CUDA, torch._addmm_activation(bias, x, W^T, use_gelu=True) runs cuBLASLt's GELU_BIAS epilogue: bias and
tanh-GELU applied to the fp32 accumulator before the one rounding to the output dtype, so the separate activation
pass over [T, inter] (read + write) disappears. Where cuBLASLt cannot take the shapes, torch falls back to addmm
followed by gelu(approximate="tanh"): the same function either way on CUDA. On CPU that op applies the erf GELU
instead, so CPU (and impl="reference") uses kernels.reference.linear_gelu_tanh.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_same_device

IMPLS = ("auto", "epilogue", "reference")


def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     impl: str = "auto") -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias): x [..., K], weight [N, K], bias [N] or None -> [..., N] in x's dtype.

    impl: "auto" (CUDA -> epilogue, else reference), "epilogue" (CUDA only), "reference".
    """
    check(impl in IMPLS, lambda: f"impl must be one of {IMPLS}, not {impl!r}")
    check_float("x", x)
    check(weight.dim() == 2 and x.shape[-1] == weight.shape[1],
          lambda: f"weight must be [N, K={x.shape[-1]}], got {tuple(weight.shape)}")
    check(bias is None or bias.shape == (weight.shape[0],),
          lambda: f"bias must have shape ({weight.shape[0]},), got {None if bias is None else tuple(bias.shape)}")
    check_same_device(("x", x), ("weight", weight))
    use_epilogue = impl == "epilogue" or (impl == "auto" and x.is_cuda)
    if not use_epilogue:
        return reference.linear_gelu_tanh(x, weight, bias)
    check(x.is_cuda, "impl='epilogue' needs CUDA tensors (CPU's _addmm_activation is the erf GELU)")
    x2 = x.reshape(-1, x.shape[-1])
    b = bias if bias is not None else x.new_zeros(weight.shape[0])
    out = torch._addmm_activation(b, x2, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])
