"""fused_add_rmsnorm_router: the fused Triton kernel (interpreted on CPU) vs the unfused reference (add + RMSNorm,
then the router's linear)."""

import pytest
import torch

from kernels import fused_add_rmsnorm_router, norm_router, reference

# bf16: the logits sum H products of a rounded row; the interpreter truncates fp32 -> bf16 (the GPU rounds)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}


def _case(t, h, e, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(device, dtype)
    res = torch.randn(t, h, generator=g).mul(2).to(device, dtype)
    w = (1 + 0.2 * torch.randn(h, generator=g)).to(device, dtype)
    router = (torch.randn(e, h, generator=g) / h ** 0.5).to(device, dtype)
    return x, res, w, router


def _check(x, res, w, router, impl="triton"):
    got = fused_add_rmsnorm_router(x, res, w, 1e-6, router, impl=impl)
    want = reference.fused_add_rmsnorm_router(x, res, w, 1e-6, router)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL[b.dtype])
    return got


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,h,e", [(1, 64, 8), (3, 100, 130), (8, 48, 6), (5, 33, 1)])  # odd H and E
def test_matches_unfused_reference(dtype, t, h, e):
    _check(*_case(t, h, e, dtype, seed=t + h + e))


@pytest.mark.usefixtures("interpreter")
def test_many_rows_take_the_unfused_path_with_the_same_result(monkeypatch):
    monkeypatch.setattr(norm_router, "FUSED_MAX_ROWS", 2)  # 5 rows > 2: Triton norm + linear
    _check(*_case(5, 64, 8, torch.float32, seed=3))


@pytest.mark.usefixtures("interpreter")
def test_logits_route_like_the_reference():
    # the top-k experts picked from the fused logits are the reference's (the MoE block's real consumer)
    x, res, w, router = _case(4, 64, 16, torch.float32, seed=4)
    logits = fused_add_rmsnorm_router(x, res, w, 1e-6, router, impl="triton")[2]
    want = reference.fused_add_rmsnorm_router(x, res, w, 1e-6, router)[2]
    assert torch.equal(torch.topk(logits, 4).indices.sort().values, torch.topk(want, 4).indices.sort().values)


def test_cpu_auto_is_the_reference_and_checks_inputs():
    x, res, w, router = _case(2, 32, 4, torch.float32)
    got = fused_add_rmsnorm_router(x, res, w, 1e-6, router)
    assert all(torch.equal(a, b) for a, b in zip(got, reference.fused_add_rmsnorm_router(x, res, w, 1e-6, router)))
    with pytest.raises(ValueError, match="router_weight"):
        fused_add_rmsnorm_router(x, res, w, 1e-6, router[:, :16])
    with pytest.raises(ValueError, match="residual"):
        fused_add_rmsnorm_router(x, res[:1], w, 1e-6, router)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 8, 100])
def test_gpu_qwen3_vl_moe_shape(t):
    _check(*_case(t, 2048, 128, torch.bfloat16, seed=t, device="cuda"), impl="auto")
