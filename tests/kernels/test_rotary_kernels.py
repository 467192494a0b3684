"""Fused rotary / MRoPE: the Triton kernel (interpreted on CPU) vs kernels.reference, in place on q and k."""

import pytest
import torch

from kernels import reference, rotary

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}
SECTIONS = {64: [8, 12, 12], 80: [8, 16, 16], 128: [16, 24, 24]}
QWEN3_SECTION = [24, 20, 20]


def mixed_positions(n_text_before: int, grid_thw: tuple[int, int, int], n_text_after: int) -> torch.Tensor:
    """[3, T] like Qwen2-VL's get_rope_index: text has t = h = w; image tokens index a (t, h, w) grid."""
    gt, gh, gw = grid_thw
    before = torch.arange(n_text_before).expand(3, -1)
    t, h, w = torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
    image = torch.stack([t.flatten(), h.flatten(), w.flatten()]) + n_text_before
    start = int(image.max()) + 1
    after = torch.arange(start, start + n_text_after).expand(3, -1)
    return torch.cat([before, image, after], dim=1).contiguous()


def _qk(t, hq, hk, d, dtype, device="cpu"):
    g = torch.Generator().manual_seed(t * 31 + hq + d)
    return (torch.randn(t, hq, d, generator=g).to(device, dtype), torch.randn(t, hk, d, generator=g).to(device, dtype))


def _check_mrope(q, k, positions, cache, section, interleaved, impl="triton"):
    q_ref, k_ref = q.clone(), k.clone()
    reference.apply_mrope_(q_ref, k_ref, positions, cache, section, interleaved)
    rotary.apply_mrope_(q, k, positions, cache, section, interleaved, impl=impl)
    torch.testing.assert_close(q, q_ref, **TOL[q.dtype])
    torch.testing.assert_close(k, k_ref, **TOL[k.dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("heads", [(4, 2), (7, 1), (3, 3)])
def test_mrope_matches_reference(dtype, head_dim, interleaved, heads):
    positions = mixed_positions(5, (1, 4, 6), 6)  # 35 tokens: text, a 4x6 image, text
    section = QWEN3_SECTION if (interleaved and head_dim == 128) else SECTIONS[head_dim]
    cache = reference.rope_cos_sin_cache(head_dim, int(positions.max()) + 1, 10000.0)
    q, k = _qk(positions.shape[1], *heads, head_dim, dtype)
    _check_mrope(q, k, positions, cache, section, interleaved)


@pytest.mark.usefixtures("interpreter")
def test_mrope_image_tokens_differ_from_text_rope():
    # With mixed positions the image tokens must not get the 1D rope of their t position; text tokens must.
    positions = mixed_positions(3, (1, 2, 3), 2)
    cache = reference.rope_cos_sin_cache(64, 32, 10000.0)
    q, k = _qk(positions.shape[1], 2, 1, 64, torch.float32)
    q_m, k_m, q_1d, k_1d = q.clone(), k.clone(), q.clone(), k.clone()
    rotary.apply_mrope_(q_m, k_m, positions, cache, SECTIONS[64], False, impl="triton")
    t_only = positions[0].expand(3, -1).contiguous()
    rotary.apply_mrope_(q_1d, k_1d, t_only, cache, SECTIONS[64], False, impl="triton")
    text = torch.cat([torch.arange(3), torch.arange(9, 11)])
    torch.testing.assert_close(q_m[text], q_1d[text])
    assert (q_m[3:9] - q_1d[3:9]).abs().max() > 1e-3


@pytest.mark.usefixtures("interpreter")
def test_mrope_bf16_cache_and_strided_q_view():
    # q and k as views into a fused qkv buffer: token stride != H * D.
    t, hq, hk, d = 20, 4, 2, 128
    qkv = torch.randn(t, (hq + 2 * hk) * d)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d: (hq + hk) * d].view(t, hk, d)
    positions = mixed_positions(4, (1, 2, 4), 8)
    cache = reference.rope_cos_sin_cache(d, 64, 1e6).to(torch.bfloat16)
    v_before = qkv[:, (hq + hk) * d:].clone()
    _check_mrope(q, k, positions, cache, QWEN3_SECTION, True)
    assert torch.equal(qkv[:, (hq + hk) * d:], v_before)  # v untouched


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 72, 80])
def test_vision_rotary_matches_reference(dtype, head_dim):
    t = 24
    q, k = _qk(t, 3, 3, head_dim, dtype)
    angles = torch.randn(t, head_dim // 2) * 3
    q_ref, k_ref = q.clone(), k.clone()
    reference.apply_rotary_(q_ref, k_ref, angles.cos(), angles.sin())
    rotary.apply_rotary_(q, k, angles.cos(), angles.sin(), impl="triton")
    torch.testing.assert_close(q, q_ref, **TOL[dtype])
    torch.testing.assert_close(k, k_ref, **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("launch", [rotary.RopeLaunch(1, 1), rotary.RopeLaunch(8, 8, 2), rotary.RopeLaunch(4, 2),
                                    rotary.RopeLaunch(16, 4, 4, head_split=2), rotary.RopeLaunch(2, 1, 1, 3),
                                    rotary.RopeLaunch(4, 2, 4, head_split=16)])
def test_launch_tile_does_not_change_results(interleaved, launch):
    # 19 tokens (not a multiple of block_t), 5 q / 3 k heads (not multiples of block_h or head_split), D/2 = 40
    positions = mixed_positions(2, (2, 2, 3), 5)
    cache = reference.rope_cos_sin_cache(80, 16, 10000.0)
    q, k = _qk(positions.shape[1], 5, 3, 80, torch.float32)
    q_ref, k_ref = q.clone(), k.clone()
    reference.apply_mrope_(q_ref, k_ref, positions, cache, SECTIONS[80], interleaved)
    rotary.apply_mrope_(q, k, positions, cache, SECTIONS[80], interleaved, impl="triton", launch=launch)
    torch.testing.assert_close((q, k), (q_ref, k_ref))


@pytest.mark.usefixtures("interpreter")
def test_tokens_outside_the_view_are_untouched():
    # q, k are the first 7 tokens of larger buffers: the masked tail of a token block must not be written
    positions = mixed_positions(1, (1, 2, 2), 2)
    cache = reference.rope_cos_sin_cache(64, 16, 10000.0)
    qb, kb = _qk(12, 3, 2, 64, torch.float32)
    q_tail, k_tail = qb[7:].clone(), kb[7:].clone()
    _check_mrope(qb[:7], kb[:7], positions, cache, SECTIONS[64], True)
    assert torch.equal(qb[7:], q_tail) and torch.equal(kb[7:], k_tail)


def test_default_launch_and_bad_launch():
    assert rotary.default_launch(128) == rotary.RopeLaunch(32, 2, 4)
    assert rotary.default_launch(128, interleaved=True) == rotary.RopeLaunch(8, 4, 4)
    for interleaved in (False, True):  # a smaller head dim moves the same elements per step
        small, big = rotary.default_launch(64, interleaved), rotary.default_launch(128, interleaved)
        assert small.block_h * small.block_t * 32 == big.block_h * big.block_t * 64
    with pytest.raises(ValueError, match="power of two"):
        rotary.RopeLaunch(12, 4)
    with pytest.raises(ValueError, match="positive"):
        rotary.RopeLaunch(16, 4, head_split=0)


def test_bad_inputs_raise_value_error():
    q, k = _qk(4, 2, 1, 64, torch.float32)
    cache = reference.rope_cos_sin_cache(64, 8, 10000.0)
    pos = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="summing to D/2=32"):
        rotary.apply_mrope_(q, k, pos, cache, [8, 8, 8], False)
    with pytest.raises(ValueError, match=r"positions must be \[3, T\]"):
        rotary.apply_mrope_(q, k, pos[:, :3], cache, SECTIONS[64], False)
    with pytest.raises(ValueError, match="same T"):
        rotary.apply_mrope_(q, k[:3], pos, cache, SECTIONS[64], False)
    with pytest.raises(ValueError, match="cos must be"):
        rotary.apply_rotary_(q, k, torch.ones(4, 16), torch.ones(4, 32))


@pytest.mark.gpu
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape", [(4096, 28, 4, 128), (100_000, 4, 1, 128), (3000, 16, 16, 80), (513, 8, 2, 256)])
def test_gpu_mrope_bf16(interleaved, shape):
    t, hq, hk, d = shape
    positions = torch.randint(0, 4096, (3, t), device="cuda")
    section = QWEN3_SECTION if (interleaved and d == 128) else [d // 8, (d // 2 - d // 8) // 2,
                                                                  d // 2 - d // 8 - (d // 2 - d // 8) // 2]
    cache = reference.rope_cos_sin_cache(d, 4096, 1e6, device="cuda")
    q, k = _qk(t, hq, hk, d, torch.bfloat16, "cuda")
    _check_mrope(q, k, positions, cache, section, interleaved, impl="auto")
