"""Fused q/k RMSNorm + MRoPE (kernels.qk_norm_mrope): the Triton kernel (interpreted on CPU) vs the unfused
reference composition (kernels.reference.rmsnorm then apply_mrope_), on strided views of a fused qkv output."""

import pytest
import torch

from kernels import qk_norm_mrope, qk_norm_mrope_store, reference, store_kv

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


def _store_case(t, hq, hk, d, dtype, cache_dtype, seed, block_size=4, device="cpu"):
    q, k, qw, kw, pos, rope = _case(t, hq, hk, d, dtype, None, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed + 100)
    v = torch.randn(t, 3 * hk * d, generator=g).to(device, dtype)[:, hk * d:2 * hk * d].reshape(t, hk, d)  # qkv-like
    num_blocks = t // block_size + 2
    slots = torch.randperm(num_blocks * block_size, generator=g)[:t]
    slots[t // 2] = -1  # one token that stores nothing (CUDA-graph padding)
    kv = torch.randn(num_blocks, 2, block_size, hk, d, generator=g).to(device, cache_dtype)
    return q, k, v, qw, kw, pos, rope, kv, slots.to(device)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype,cache_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("t,hq,hk,d,section,block_h", [
    (1, 32, 4, 128, [24, 20, 20], 4),  # Qwen3-VL-30B-A3B decode (the slot of the only token is -1 here)
    (7, 7, 3, 64, [8, 12, 12], 4),  # odd head counts: partial head blocks
    (5, 4, 1, 40, [8, 6, 6], 2),  # D/2 = 20: masked frequencies
])
def test_store_variant_equals_norm_rope_then_store_kv(dtype, cache_dtype, t, hq, hk, d, section, block_h):
    """The fused store gives q and the cache bit for bit as the two kernels it replaces, touches no slot but the
    given ones, and skips negative slots."""
    _check_store(_store_case(t, hq, hk, d, dtype, cache_dtype, seed=t * 3 + hk), section, block_h)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 8, 333])
def test_gpu_store_variant_equals_norm_rope_then_store_kv(t):
    _check_store(_store_case(t, 32, 4, 128, torch.bfloat16, torch.bfloat16, seed=t, block_size=16, device="cuda"),
                 [24, 20, 20], 4)


def _check_store(case, section, block_h):
    q, k, v, qw, kw, pos, rope, kv, slots = case
    hk, d = k.shape[1], k.shape[2]
    want_kv = kv.clone()
    want_q, ko = qk_norm_mrope(q, k, qw, kw, 1e-6, pos, rope, section, True, impl="triton", block_h=block_h)
    store_kv(ko, v, want_kv, slots, impl="triton")
    got_kv = kv.clone()
    got_q = qk_norm_mrope_store(q, k, v, qw, kw, 1e-6, pos, rope, section, True, got_kv, slots, impl="triton",
                                block_h=block_h)
    assert got_q.is_contiguous() and got_q.dtype == want_q.dtype
    assert torch.equal(got_q, want_q)
    assert torch.equal(got_kv, want_kv)
    untouched = torch.ones(kv.shape[0] * kv.shape[2], dtype=torch.bool, device=kv.device)
    untouched[slots[slots >= 0]] = False
    flat = lambda c: c.transpose(1, 2).reshape(-1, 2, hk, d)  # noqa: E731  [slots, 2, Hk, D]
    assert torch.equal(flat(got_kv)[untouched], flat(kv)[untouched])
    if (slots >= 0).any():
        assert not torch.equal(got_kv, kv)
    # and against the torch reference path of the same call
    ref_kv = kv.clone()
    ref_q = qk_norm_mrope_store(q, k, v, qw, kw, 1e-6, pos, rope, section, True, ref_kv, slots, impl="reference")
    torch.testing.assert_close(got_q, ref_q, **TOL[ref_q.dtype])
    low = torch.bfloat16 in (q.dtype, kv.dtype)
    torch.testing.assert_close(got_kv, ref_kv, **TOL[torch.bfloat16 if low else torch.float32])


def test_store_variant_checks_the_cache():
    q, k, v, qw, kw, pos, rope, kv, slots = _store_case(3, 4, 2, 32, torch.float32, torch.float32, seed=1)
    with pytest.raises(ValueError, match="kv_cache must be"):
        qk_norm_mrope_store(q, k, v, qw, kw, 1e-6, pos, rope, [4, 6, 6], True, kv[:, :1], slots)
    with pytest.raises(ValueError, match="slot_mapping must be"):
        qk_norm_mrope_store(q, k, v, qw, kw, 1e-6, pos, rope, [4, 6, 6], True, kv, slots[:2])
