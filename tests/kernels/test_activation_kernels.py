"""Gated activations: Triton (interpreted on CPU) vs kernels.reference, checks, GPU dispatch."""

import pytest
import torch

from kernels import activation, reference

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["silu_and_mul", "gelu_tanh_and_mul"])
@pytest.mark.parametrize("shape", [(5, 2 * 300), (2, 3, 2 * 1100)])
def test_triton_matches_reference(dtype, op, shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    out = getattr(activation, op)(x, impl="triton")
    want = getattr(reference, op)(x)
    assert out.shape == want.shape and out.dtype == dtype
    torch.testing.assert_close(out, want, **TOL[dtype])


def test_cpu_auto_uses_reference_and_checks_shape():
    x = torch.randn(3, 8)
    torch.testing.assert_close(activation.silu_and_mul(x), reference.silu_and_mul(x))
    with pytest.raises(ValueError, match="even last dimension"):
        activation.silu_and_mul(torch.randn(3, 7))


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["silu_and_mul", "gelu_tanh_and_mul"])
def test_gpu_bf16(op):
    x = torch.randn(4096, 2 * 18944, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(getattr(activation, op)(x), getattr(reference, op)(x), **TOL[torch.bfloat16])
