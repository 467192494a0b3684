"""Fused rotary / MRoPE: the Triton kernel (interpreted on CPU) vs kernels.reference, in place on q and k."""

import logging
from dataclasses import replace

import pytest
import torch

from kernels import reference, rotary
from kernels._dispatch import next_pow2

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}
SECTIONS = {64: [8, 12, 12], 80: [8, 16, 16], 128: [16, 24, 24], 256: [32, 48, 48]}
QWEN3_SECTION = [24, 20, 20]


@pytest.fixture
def fresh_axis_tables(monkeypatch):
    """An empty axis-table cache for this test (the module's cache outlives tests)."""
    tables = {}
    monkeypatch.setattr(rotary, "_AXIS_TABLES", tables)
    return tables


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


def _check_mrope(q, k, positions, cache, section, interleaved, impl="triton", launch=None):
    q_ref, k_ref = q.clone(), k.clone()
    reference.apply_mrope_(q_ref, k_ref, positions, cache, section, interleaved)
    rotary.apply_mrope_(q, k, positions, cache, section, interleaved, impl=impl, launch=launch)
    torch.testing.assert_close(q, q_ref, **TOL[q.dtype])
    torch.testing.assert_close(k, k_ref, **TOL[k.dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("heads", [(4, 2), (7, 1), (3, 3)])
@pytest.mark.parametrize("axis_table", [True, False])
def test_mrope_matches_reference(dtype, head_dim, interleaved, heads, axis_table):
    positions = mixed_positions(5, (1, 4, 6), 6)  # 35 tokens: text, a 4x6 image, text
    section = QWEN3_SECTION if (interleaved and head_dim == 128) else SECTIONS[head_dim]
    cache = reference.rope_cos_sin_cache(head_dim, int(positions.max()) + 1, 10000.0)
    q, k = _qk(positions.shape[1], *heads, head_dim, dtype)
    launch = replace(rotary.default_launch(head_dim, interleaved), axis_table=axis_table)
    _check_mrope(q, k, positions, cache, section, interleaved, launch=launch)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("interleaved", [False, True])
def test_axis_table_and_arithmetic_variants_agree_exactly(interleaved):
    # same positions, same cache entries, same arithmetic: only where the axis comes from differs
    positions = mixed_positions(4, (2, 3, 4), 5)
    cache = reference.rope_cos_sin_cache(128, 64, 1e6).to(torch.bfloat16)
    q, k = _qk(positions.shape[1], 6, 2, 128, torch.bfloat16)
    out = {}
    for axis_table in (True, False):
        q2, k2 = q.clone(), k.clone()
        launch = rotary.RopeLaunch(8, 2, axis_table=axis_table)
        rotary.apply_mrope_(q2, k2, positions, cache, QWEN3_SECTION, interleaved, impl="triton", launch=launch)
        out[axis_table] = (q2, k2)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])


@pytest.mark.usefixtures("interpreter")
def test_axis_table_variant_reads_the_cached_table(fresh_axis_tables):
    # the table is built once per layout with mrope_axis_map's contents, and the kernel really takes the axis
    # from it: a planted all-t table turns MRoPE into the 1D rope of the t positions
    positions = mixed_positions(3, (1, 2, 3), 2)
    cache = reference.rope_cos_sin_cache(64, 32, 10000.0)
    q, k = _qk(positions.shape[1], 2, 1, 64, torch.float32)
    _check_mrope(q.clone(), k.clone(), positions, cache, SECTIONS[64], True)
    key = (q.device, tuple(SECTIONS[64]), True)
    assert list(fresh_axis_tables) == [key]
    table = fresh_axis_tables[key]
    assert table.dtype == torch.int32 and torch.equal(table.long(), reference.mrope_axis_map(SECTIONS[64], True))
    _check_mrope(q.clone(), k.clone(), positions, cache, SECTIONS[64], True)
    assert fresh_axis_tables[key] is table  # reused, not rebuilt
    fresh_axis_tables[key] = torch.zeros_like(table)
    q_1d, k_1d, q_m, k_m = q.clone(), k.clone(), q.clone(), k.clone()
    reference.apply_mrope_(q_1d, k_1d, positions[0].expand(3, -1), cache, SECTIONS[64], True)
    rotary.apply_mrope_(q_m, k_m, positions, cache, SECTIONS[64], True, impl="triton")
    torch.testing.assert_close((q_m, k_m), (q_1d, k_1d))


@pytest.mark.usefixtures("interpreter")
def test_failing_axis_table_kernel_falls_back_on_the_default_launch(monkeypatch, caplog, fresh_axis_tables):
    # a table kernel that fails (say, a compile error first seen on the GPU) must not break the default path:
    # it logs, remembers the failure for this layout and runs the arithmetic variant; an explicit launch raises
    real_launch, calls = rotary._launch, []

    def table_fails(*args):
        calls.append(args[-1] is not None)
        if args[-1] is not None:
            raise RuntimeError("planted table-kernel failure")
        real_launch(*args)

    monkeypatch.setattr(rotary, "_launch", table_fails)
    positions = mixed_positions(2, (1, 2, 2), 3)
    cache = reference.rope_cos_sin_cache(64, 16, 10000.0)
    q, k = _qk(positions.shape[1], 3, 1, 64, torch.float32)
    with caplog.at_level(logging.WARNING, logger="kernels.rotary"):
        _check_mrope(q.clone(), k.clone(), positions, cache, SECTIONS[64], True)
    assert "planted table-kernel failure" in caplog.text
    assert calls == [True, False] and fresh_axis_tables == {(q.device, tuple(SECTIONS[64]), True): None}
    _check_mrope(q.clone(), k.clone(), positions, cache, SECTIONS[64], True)
    assert calls == [True, False, False]  # remembered: no second try
    with pytest.raises(RuntimeError, match="planted"):
        rotary.apply_mrope_(q, k, positions, cache, [8, 12, 12], False, impl="triton",
                            launch=rotary.RopeLaunch(4, 2))


def test_axis_table_is_not_built_inside_cuda_graph_capture(monkeypatch, fresh_axis_tables):
    # building the table copies host -> device, which a graph capture forbids: the first use inside a capture
    # gets None (arithmetic axis) and caches nothing, so the next eager call builds it
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert rotary._axis_table(torch.device("cuda", 0), (16, 24, 24), True) is None
    assert fresh_axis_tables == {}


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
                                    rotary.RopeLaunch(4, 2, 4, head_split=16), rotary.RopeLaunch(32, 2, 4),
                                    rotary.RopeLaunch(64, 1, 2, 2)])
@pytest.mark.parametrize("axis_table", [True, False])
def test_launch_tile_does_not_change_results(interleaved, launch, axis_table):
    launch = replace(launch, axis_table=axis_table)
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
    for interleaved in (False, True):  # the axis table gives both layouts the same code, hence the same tile
        assert rotary.default_launch(128, interleaved) == rotary.RopeLaunch(8, 4, 4, axis_table=True)
        base = rotary.default_launch(128, interleaved)
        for d in (32, 64, 80, 256, 512):  # every head dim moves the same elements per step
            cfg = rotary.default_launch(d, interleaved)
            assert cfg.block_h * cfg.block_t * next_pow2(d // 2) == base.block_h * base.block_t * 64, d
    assert rotary.default_launch(256) == rotary.RopeLaunch(4, 4, 4)  # fewer tokens: cos/sin keep their size
    assert rotary.vision_launch(80) == rotary.RopeLaunch(32, 2, 4) and rotary.vision_launch(64) == rotary.RopeLaunch(
        32, 4, 4)  # the 2D rope keeps its tile (not re-tuned with MRoPE)
    with pytest.raises(ValueError, match="power of two"):
        rotary.RopeLaunch(12, 4)
    with pytest.raises(ValueError, match="positive"):
        rotary.RopeLaunch(16, 4, head_split=0)
    with pytest.raises(ValueError, match="axis_table must be a bool"):
        rotary.RopeLaunch(16, 4, axis_table=1)


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


@pytest.mark.gpu
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("launch", [rotary.RopeLaunch(32, 2, 4), rotary.RopeLaunch(64, 1, 2, 2),
                                    rotary.RopeLaunch(128, 2, 8, 2), rotary.RopeLaunch(8, 4, 4)])
def test_gpu_axis_table_and_arithmetic_variants_agree(interleaved, launch):
    # compiled for the GPU, the two variants must still give bit-identical results, and match the reference
    t, hq, hk, d = 1000, 28, 4, 128
    positions = torch.randint(0, 2048, (3, t), device="cuda")
    cache = reference.rope_cos_sin_cache(d, 2048, 1e6, device="cuda")
    section = QWEN3_SECTION if interleaved else SECTIONS[128]
    q, k = _qk(t, hq, hk, d, torch.bfloat16, "cuda")
    q_a, k_a, q_t, k_t = q.clone(), k.clone(), q.clone(), k.clone()
    rotary.apply_mrope_(q_a, k_a, positions, cache, section, interleaved, launch=replace(launch, axis_table=False))
    _check_mrope(q_t, k_t, positions, cache, section, interleaved, impl="auto", launch=launch)
    assert torch.equal(q_a, q_t) and torch.equal(k_a, k_t)


@pytest.mark.gpu
def test_gpu_mrope_first_called_inside_graph_capture(fresh_axis_tables):
    # the decode graphs capture apply_mrope_; a layout first seen inside the capture must still capture and
    # replay correctly (arithmetic axis there), and the next eager call builds the table
    t, d = 16, 128
    positions = torch.randint(0, 512, (3, t), device="cuda")
    cache = reference.rope_cos_sin_cache(d, 512, 1e6, device="cuda")
    q, k = _qk(t, 4, 2, d, torch.bfloat16, "cuda")
    q0, k0 = q.clone(), k.clone()
    rotary.apply_mrope_(q.clone(), k.clone(), positions, cache, QWEN3_SECTION, True, launch=rotary.RopeLaunch(
        32, 2, axis_table=False))  # compile outside the capture
    fresh_axis_tables.clear()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rotary.apply_mrope_(q, k, positions, cache, QWEN3_SECTION, True)
    assert fresh_axis_tables == {}
    q.copy_(q0)
    k.copy_(k0)
    graph.replay()
    torch.cuda.synchronize()
    q_ref, k_ref = q0.clone(), k0.clone()
    reference.apply_mrope_(q_ref, k_ref, positions, cache, QWEN3_SECTION, True)
    torch.testing.assert_close((q, k), (q_ref, k_ref), **TOL[torch.bfloat16])
    rotary.apply_mrope_(q0, k0, positions, cache, QWEN3_SECTION, True)
    assert list(fresh_axis_tables) == [(q.device, tuple(QWEN3_SECTION), True)]


def test_spread_heads_splits_only_short_batches():
    cfg = rotary.default_launch(128, True)
    assert rotary.spread_heads(cfg, 4096, 28) == cfg  # 512 token blocks: enough programs already
    one = rotary.spread_heads(cfg, 1, 28)
    assert one.head_split == -(-28 // cfg.block_h) and one.block_t == cfg.block_t


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("interleaved", [False, True])
def test_decode_sized_batches_with_split_heads_match_reference(interleaved):
    # the default launch path (launch=None) at decode sizes: spread_heads gives several head groups per token block
    for t in (1, 3):
        positions = torch.arange(40, 40 + t).expand(3, -1).contiguous()
        cache = reference.rope_cos_sin_cache(128, 64, 10000.0)
        q, k = _qk(t, 28, 4, 128, torch.float32)
        _check_mrope(q, k, positions, cache, QWEN3_SECTION if interleaved else SECTIONS[128], interleaved)
