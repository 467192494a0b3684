"""Norm launchers: Triton bodies (TRITON_INTERPRET=1 on CPU) against kernels.reference, input checks, GPU dispatch."""

import pytest
import torch

from kernels import norm, reference

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2).to(device, dtype)
    r = torch.randn(shape, generator=g).to(device, dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g)).to(device, dtype)
    b = torch.randn(shape[-1], generator=g).to(device, dtype)
    return x, r, w, b


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 96), (2, 3, 130)])
def test_rmsnorm_triton_matches_reference(dtype, shape):
    x, _, w, _ = _inputs(shape, dtype)
    out = norm.rmsnorm(x, w, 1e-6, impl="triton")
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, reference.rmsnorm(x, w, 1e-6), **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
def test_rmsnorm_promotes_like_reference():
    x, _, w, _ = _inputs((3, 64), torch.bfloat16)
    out = norm.rmsnorm(x, w.float(), 1e-6, impl="triton")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference.rmsnorm(x, w.float(), 1e-6), **TOL[torch.bfloat16])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rmsnorm_out_of_place_and_in_place(dtype):
    x, r, w, _ = _inputs((5, 200), dtype)
    want_norm, want_sum = reference.fused_add_rmsnorm(x, r, w, 1e-5)
    got_norm, got_sum = norm.fused_add_rmsnorm(x, r, w, 1e-5, impl="triton")
    torch.testing.assert_close(got_norm, want_norm, **TOL[dtype])
    torch.testing.assert_close(got_sum, want_sum, **TOL[dtype])
    xi, ri = x.clone(), r.clone()
    norm.fused_add_rmsnorm_(xi, ri, w, 1e-5, impl="triton")
    torch.testing.assert_close(xi, want_norm, **TOL[dtype])
    torch.testing.assert_close(ri, want_sum, **TOL[dtype])


def test_fused_add_rmsnorm_in_place_reference_path():
    x, r, w, _ = _inputs((4, 32), torch.float32)
    want_norm, want_sum = reference.fused_add_rmsnorm(x, r, w, 1e-6)
    norm.fused_add_rmsnorm_(x, r, w, 1e-6)
    torch.testing.assert_close(x, want_norm)
    torch.testing.assert_close(r, want_sum)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_triton_matches_reference(dtype, with_bias):
    x, _, w, b = _inputs((6, 80), dtype)
    bias = b if with_bias else None
    out = norm.layernorm(x + 3, w, bias, 1e-6, impl="triton")  # an offset mean exercises the centring
    torch.testing.assert_close(out, reference.layernorm(x + 3, w, bias, 1e-6), **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
def test_strided_rows_are_handled():
    x, _, w, _ = _inputs((6, 128), torch.float32)
    view = x[:, :64]  # row stride 128, last dim contiguous
    torch.testing.assert_close(norm.rmsnorm(view, w[:64], 1e-6, impl="triton"), reference.rmsnorm(view, w[:64], 1e-6))


def test_bad_inputs_raise_value_error():
    x, r, w, _ = _inputs((3, 16), torch.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        norm.rmsnorm(x, w[:8])
    with pytest.raises(ValueError, match="residual must have the shape"):
        norm.fused_add_rmsnorm(x, r[:2], w)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        norm.rmsnorm(x.long(), w)
    with pytest.raises(ValueError, match="impl must be one of"):
        norm.rmsnorm(x, w, impl="fast")
    with pytest.raises(ValueError, match="needs CUDA"):
        norm.rmsnorm(x, w, impl="flashinfer")


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [1280, 3584, 4096])
@pytest.mark.parametrize("impl", ["auto", "triton"])
def test_gpu_norms_bf16(hidden, impl):
    x, r, w, b = _inputs((2048, hidden), torch.bfloat16, "cuda")
    torch.testing.assert_close(norm.rmsnorm(x, w, 1e-6, impl=impl), reference.rmsnorm(x, w, 1e-6), **TOL[torch.bfloat16])
    got = norm.fused_add_rmsnorm(x, r, w, 1e-6, impl=impl)
    for g, e in zip(got, reference.fused_add_rmsnorm(x, r, w, 1e-6)):
        torch.testing.assert_close(g, e, **TOL[torch.bfloat16])
    torch.testing.assert_close(norm.layernorm(x, w, b, 1e-6, impl=impl), reference.layernorm(x, w, b, 1e-6),
                               **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_flashinfer_norms_match_reference():
    pytest.importorskip("flashinfer")
    x, r, w, _ = _inputs((512, 3584), torch.bfloat16, "cuda")
    tol = dict(rtol=2e-2, atol=2e-2)  # FlashInfer multiplies by the weight before rounding: one more ulp apart
    torch.testing.assert_close(norm.rmsnorm(x, w, 1e-6, impl="flashinfer"), reference.rmsnorm(x, w, 1e-6), **tol)
    want_norm, want_sum = reference.fused_add_rmsnorm(x, r, w, 1e-6)
    norm.fused_add_rmsnorm_(x, r, w, 1e-6, impl="flashinfer")
    torch.testing.assert_close(x, want_norm, **tol)
    torch.testing.assert_close(r, want_sum, **tol)


@pytest.mark.usefixtures("interpreter")
def test_fused_add_with_fp32_residual_matches_reference():
    x, r, w, _ = _inputs((4, 64), torch.bfloat16)
    got = norm.fused_add_rmsnorm(x, r.float(), w, 1e-6, impl="triton")
    want = reference.fused_add_rmsnorm(x, r.float(), w, 1e-6)
    assert got[1].dtype == want[1].dtype == torch.bfloat16
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])
