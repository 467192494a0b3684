"""store_kv: Triton scatter (interpreted on CPU) vs kernels.reference; negative slots skip."""

import pytest
import torch

from kernels import kv_store, reference


def _case(t=9, hk=2, d=16, blocks=4, block_size=4, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(t + hk + d)
    k = torch.randn(t, hk, d, generator=g).to(device, dtype)
    v = torch.randn(t, hk, d, generator=g).to(device, dtype)
    slots = torch.randperm(blocks * block_size, generator=g)[:t].to(device)
    cache = torch.zeros(blocks, 2, block_size, hk, d, dtype=dtype, device=device)
    return k, v, cache, slots


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hk,d", [(2, 16), (3, 80), (1, 128)])
def test_triton_matches_reference(dtype, hk, d):
    k, v, cache, slots = _case(hk=hk, d=d, dtype=dtype)
    slots[2] = -1
    want = cache.clone()
    reference.store_kv(k, v, want, slots)
    kv_store.store_kv(k, v, cache, slots, impl="triton")
    assert torch.equal(cache, want)
    block, off = divmod(int(slots[0]), cache.shape[2])
    assert torch.equal(cache[block, 0, off], k[0]) and torch.equal(cache[block, 1, off], v[0])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_negative_slot_writes_nothing(impl):
    k, v, cache, _ = _case(t=3)
    kv_store.store_kv(k, v, cache, torch.tensor([-1, -1, -1]), impl=impl)
    assert cache.abs().sum() == 0


@pytest.mark.usefixtures("interpreter")
def test_casts_to_cache_dtype_and_checks_shapes():
    k, v, cache, slots = _case()
    cache16 = cache.to(torch.bfloat16)
    kv_store.store_kv(k, v, cache16, slots, impl="triton")
    block, off = divmod(int(slots[1]), cache.shape[2])
    # the CPU interpreter truncates fp32 -> bf16 where CUDA rounds to nearest: compare within one bf16 ulp
    torch.testing.assert_close(cache16[block, 1, off], v[1].to(torch.bfloat16), rtol=1.6e-2, atol=1e-2)
    with pytest.raises(ValueError, match="kv_cache must be"):
        kv_store.store_kv(k, v, cache[:, :, :, :1], slots)
    with pytest.raises(ValueError, match="slot_mapping must be"):
        kv_store.store_kv(k, v, cache, slots[:3])


@pytest.mark.gpu
def test_gpu_store_kv_bf16():
    k, v, cache, slots = _case(t=4096, hk=4, d=128, blocks=512, block_size=16, dtype=torch.bfloat16, device="cuda")
    slots[::7] = -1
    want = cache.clone()
    reference.store_kv(k, v, want, slots)
    kv_store.store_kv(k, v, cache, slots)
    assert torch.equal(cache, want)
