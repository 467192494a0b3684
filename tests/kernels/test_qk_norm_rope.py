"""Fused q/k RMSNorm + MRoPE (kernels.qk_norm_mrope): the Triton kernel (interpreted on CPU) vs the unfused
reference composition (kernels.reference.rmsnorm then apply_mrope_), on strided views of a fused qkv output."""

import pytest
import torch

from kernels import qk_norm_mrope, reference

# bf16: two roundings in a row (the normalised head, then the rotation), and the interpreter truncates fp32 -> bf16
# where the GPU rounds to nearest: up to 2 ulps of values ~4-8 on CPU, and the rotation's cancellations make that an
# absolute, not a relative, error. A missing weight or a wrong position errs by ~0.3 and more.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=6.5e-2)}


def _case(t, hq, hk, d, dtype, section, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).mul(3).to(device, dtype)  # [T, (Hq + 2Hk) * D]
    q, k, _ = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    q, k = q.reshape(t, hq, d), k.reshape(t, hk, d)  # strided views, as TextAttention has them
    qw = (1 + 0.3 * torch.randn(d, generator=g)).to(device, dtype)
    kw = (1 + 0.3 * torch.randn(d, generator=g)).to(device, dtype)
    pos = torch.randint(0, 50, (3, t), generator=g).to(device)
    cache = reference.rope_cos_sin_cache(d, 64, 10000.0).to(device)
    return q, k, qw, kw, pos, cache


def _check(q, k, qw, kw, pos, cache, section, interleaved, **kw_launch):
    out = qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, section, interleaved, impl="triton", **kw_launch)
    want = reference.qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, section, interleaved)
    for got, ref in zip(out, want):
        assert got.shape == ref.shape and got.dtype == ref.dtype and got.is_contiguous()
        torch.testing.assert_close(got, ref, **TOL[ref.dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,hq,hk,d,section", [
    (1, 32, 4, 128, [24, 20, 20]),  # Qwen3-VL-30B-A3B decode
    (5, 7, 3, 64, [8, 12, 12]),  # odd head counts: partial head blocks for q and k
    (3, 4, 1, 40, [8, 6, 6]),  # D/2 = 20, not a power of two: masked frequencies
])
@pytest.mark.parametrize("interleaved", [True, False])
def test_matches_unfused_reference(dtype, t, hq, hk, d, section, interleaved):
    q, k, qw, kw, pos, cache = _case(t, hq, hk, d, dtype, section, seed=t + hq)
    _check(q, k, qw, kw, pos, cache, section, interleaved)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("block_h", [1, 2, 8])
def test_other_head_blocks(block_h):
    q, k, qw, kw, pos, cache = _case(4, 6, 2, 32, torch.bfloat16, [4, 6, 6], seed=7)
    _check(q, k, qw, kw, pos, cache, [4, 6, 6], True, block_h=block_h)


@pytest.mark.usefixtures("interpreter")
def test_inputs_untouched_and_norm_actually_applied():
    q, k, qw, kw, pos, cache = _case(2, 4, 2, 32, torch.float32, [4, 6, 6], seed=8)
    before = (q.clone(), k.clone())
    qo, ko = qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, [4, 6, 6], True, impl="triton")
    assert torch.equal(q, before[0]) and torch.equal(k, before[1])  # out of place
    # rotation keeps each head's norm: |qo| = |rmsnorm(q)|, which is not |q| (inputs are scaled by 3)
    normed = reference.rmsnorm(q, qw, 1e-6)
    torch.testing.assert_close(qo.norm(dim=-1), normed.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(qo.norm(dim=-1), q.norm(dim=-1), rtol=0.1)


def test_cpu_auto_is_the_reference_and_checks_inputs():
    q, k, qw, kw, pos, cache = _case(3, 4, 2, 32, torch.float32, [4, 6, 6])
    got = qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, [4, 6, 6], True)
    want = reference.qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, [4, 6, 6], True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="k_weight"):
        qk_norm_mrope(q, k, qw, kw[:16], 1e-6, pos, cache, [4, 6, 6], True)
    with pytest.raises(ValueError, match="mrope_section"):
        qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, [4, 6, 5], True)
    with pytest.raises(ValueError, match="block_h"):
        qk_norm_mrope(q, k, qw, kw, 1e-6, pos, cache, [4, 6, 6], True, block_h=3)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 8, 333])
def test_gpu_matches_reference(t):
    q, k, qw, kw, pos, cache = _case(t, 32, 4, 128, torch.bfloat16, [24, 20, 20], seed=t, device="cuda")
    _check(q, k, qw, kw, pos, cache, [24, 20, 20], True)
