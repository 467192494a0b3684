"""The vision tower's fused ops vs kernels.reference: rotary on the fused qkv (in place on strided views, or packed
with v copied), add + LayerNorm, and linear + tanh-GELU. Triton bodies interpreted on CPU (TRITON_INTERPRET=1);
the gpu-marked tests run the same checks on CUDA."""

import pytest
import torch

from kernels import reference
from kernels.add_norm import fused_add_layernorm
from kernels.linear_act import linear_gelu_tanh
from kernels.rotary_qkv import rotary_qkv

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def _qkv(t: int, heads: int, d: int, dtype, device="cpu", pad: int = 0):
    """A [T, 3*H*D] projection output (row stride 3*H*D + pad, like a slice of a wider buffer) and cos/sin."""
    g = torch.Generator().manual_seed(t * 7 + heads * 3 + d)
    wide = torch.randn(t, 3 * heads * d + pad, generator=g).to(device, dtype)
    angles = torch.rand(t, d // 2, generator=g).to(device) * 6.0
    return wide[:, :3 * heads * d], angles.cos(), angles.sin()


def _expected(qkv, cos, sin, heads):
    t, d = qkv.shape[0], qkv.shape[1] // (3 * heads)
    q, k, v = qkv.clone().view(t, 3, heads, d).unbind(1)
    q, k, v = q.clone(), k.clone(), v.clone()
    reference.apply_rotary_(q, k, cos, sin)
    return q, k, v


def _check_rotary_qkv(t, heads, d, dtype, contiguous, impl, device="cpu", pad=0):
    qkv, cos, sin = _qkv(t, heads, d, dtype, device, pad)
    before = qkv.clone()
    want = _expected(qkv, cos, sin, heads)
    got = rotary_qkv(qkv, cos, sin, heads, contiguous=contiguous, impl=impl)
    for g, w in zip(got, want):
        assert g.shape == (t, heads, d)
        torch.testing.assert_close(g, w, **TOL[dtype])
    if contiguous:
        assert all(g.is_contiguous() for g in got)
        torch.testing.assert_close(qkv, before, rtol=0, atol=0)  # the projection output is left as it was
    else:
        assert all(g.data_ptr() >= qkv.data_ptr() and g.stride(0) == qkv.stride(0) for g in got)  # views
        assert torch.equal(got[2], before.view(t, 3, heads, d)[:, 2])  # v untouched
        torch.testing.assert_close(qkv.view(t, 3, heads, d)[:, 0], want[0], **TOL[dtype])  # rotated in place


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("contiguous", [False, True])
@pytest.mark.parametrize("t,heads,d", [(37, 3, 72), (21, 5, 80), (1, 1, 8), (50, 4, 64)])
def test_rotary_qkv_matches_reference(t, heads, d, dtype, contiguous):
    _check_rotary_qkv(t, heads, d, dtype, contiguous, "triton")


@pytest.mark.usefixtures("interpreter")
def test_rotary_qkv_padded_row_stride():
    # a token stride wider than 3*H*D (qkv a column slice of a wider buffer): both layouts still right
    for contiguous in (False, True):
        _check_rotary_qkv(19, 3, 72, torch.float32, contiguous, "triton", pad=24)


def test_rotary_qkv_reference_path_is_the_oracle():
    for contiguous in (False, True):
        _check_rotary_qkv(13, 2, 16, torch.float32, contiguous, "reference")


def test_rotary_qkv_rejects_bad_inputs():
    qkv, cos, sin = _qkv(4, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="3 \\* heads"):
        rotary_qkv(qkv, cos, sin, heads=5)
    with pytest.raises(ValueError, match="cos must be"):
        rotary_qkv(qkv, cos[:3], sin, heads=2)
    with pytest.raises(ValueError, match="qkv must be"):
        rotary_qkv(qkv.view(4, 3, 16), cos, sin, heads=2)


def _rows(m, n, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed + m * 13 + n)
    x, r = (torch.randn(m, n, generator=g).to(device, dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(n, generator=g)).to(device, dtype)
    b = (0.1 * torch.randn(n, generator=g)).to(device, dtype)
    return x, r, w, b


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n", [(7, 72), (3, 1152), (1, 5), (5, 4608)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_add_layernorm_matches_reference(m, n, dtype, with_bias):
    x, r, w, b = _rows(m, n, dtype)
    b = b if with_bias else None
    want_out, want_sum = reference.fused_add_layernorm(x, r, w, b, 1e-6)
    out, summed = fused_add_layernorm(x, r, w, b, 1e-6, impl="triton")
    # fp32: the sum is exactly an unfused add's; bf16 within one rounding (the interpreter's fp32 -> bf16 cast
    # truncates; CUDA rounds to nearest, and the gpu test below asks for equality)
    torch.testing.assert_close(summed, want_sum, **(TOL[dtype] if dtype == torch.bfloat16 else dict(rtol=0, atol=0)))
    torch.testing.assert_close(out, want_out, **TOL[dtype])


def test_fused_add_layernorm_reference_equals_unfused_ops():
    x, r, w, b = _rows(6, 40, torch.float32)
    out, summed = fused_add_layernorm(x, r, w, b, 1e-5, impl="reference")
    torch.testing.assert_close(summed, x + r, rtol=0, atol=0)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x + r, (40,), w, b, 1e-5))


@pytest.mark.usefixtures("interpreter")
def test_fused_add_layernorm_3d_and_strided_rows():
    x, r, w, b = _rows(12, 24, torch.float32)
    wide = torch.randn(12, 40)
    xs = wide[:, :24].copy_(x)  # row stride 40
    out, summed = fused_add_layernorm(xs.view(3, 4, 24)[:, :, :], r.view(3, 4, 24), w, b, impl="triton")
    want_out, want_sum = reference.fused_add_layernorm(x, r, w, b, 1e-6)
    assert out.shape == (3, 4, 24)
    torch.testing.assert_close(out.view(12, 24), want_out, **TOL[torch.float32])
    torch.testing.assert_close(summed.view(12, 24), want_sum, rtol=0, atol=0)


def test_fused_add_layernorm_rejects_mismatched_residual():
    x, r, w, b = _rows(4, 8, torch.float32)
    with pytest.raises(ValueError, match="residual must have the shape"):
        fused_add_layernorm(x, r[:3], w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gelu_tanh_reference_is_tanh_gelu_of_linear(dtype):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 5, 24, generator=g), torch.randn(33, 24, generator=g), torch.randn(33, generator=g)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    out = linear_gelu_tanh(x, w, b)  # CPU: the reference
    lin = (x.double() @ w.double().T + b.double())
    want = 0.5 * lin * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (lin + 0.044715 * lin ** 3)))
    assert out.shape == (2, 5, 33) and out.dtype == dtype
    torch.testing.assert_close(out.double(), want, **{k: 4 * v for k, v in TOL[dtype].items()})


def test_linear_gelu_tanh_epilogue_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        linear_gelu_tanh(torch.randn(2, 4), torch.randn(3, 4), torch.randn(3), impl="epilogue")


# ---- CUDA ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("contiguous", [False, True])
@pytest.mark.parametrize("t,heads,d", [(4096, 16, 72), (5476, 16, 80), (37, 3, 72)])
def test_rotary_qkv_cuda(t, heads, d, dtype, contiguous):
    _check_rotary_qkv(t, heads, d, dtype, contiguous, "auto", device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n", [(4096, 1152), (1024, 4608), (3, 5)])
def test_fused_add_layernorm_cuda(m, n, dtype):
    x, r, w, b = _rows(m, n, dtype, "cuda")
    want_out, want_sum = reference.fused_add_layernorm(x, r, w, b, 1e-6)
    out, summed = fused_add_layernorm(x, r, w, b, 1e-6)
    assert torch.equal(summed, want_sum)
    torch.testing.assert_close(out, want_out, **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,k,n", [(4096, 1152, 4304), (37, 72, 40)])
def test_linear_gelu_tanh_epilogue_cuda(m, k, n, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, k, generator=g).to("cuda", dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to("cuda", dtype)
    b = torch.randn(n, generator=g).to("cuda", dtype)
    got = linear_gelu_tanh(x, w, b, impl="epilogue")
    want = reference.linear_gelu_tanh(x.float(), w.float(), b.float())
    # bf16: one rounding of the output plus bf16 inputs' products summed in fp32
    torch.testing.assert_close(got.float(), want, **({"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16
                                                      else {"rtol": 1e-4, "atol": 1e-4}))
