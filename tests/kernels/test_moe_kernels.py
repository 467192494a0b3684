"""Fused MoE: the Triton path (interpreted on CPU, tiny shapes) against kernels.reference; GPU shapes of
Qwen3-VL-30B-A3B on CUDA. The routing is compared as id sets plus close weights; the experts as outputs."""

import dataclasses

import pytest
import torch

from kernels import moe, moe_launch, reference
from kernels.moe_config import INTERPRET_CONFIG, GemmTile, MoeConfig, default_config, pow2
from kernels.moe_tuning import MoeTuner
from moe_helpers import CASES, TOL, moe_inputs, moe_weights

def _check_routing(logits, top_k, renormalize):
    w, ids = moe.moe_route(logits, top_k, renormalize, impl="triton")
    rw, rids = reference.moe_route(logits, top_k, renormalize)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and ids.shape == (logits.shape[0], top_k)
    for row in range(logits.shape[0]):
        assert set(ids[row].tolist()) == set(rids[row].tolist())
        order = torch.argsort(ids[row])
        torch.testing.assert_close(w[row][order], rw[row][torch.argsort(rids[row])], rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("t,e,k", [(1, 8, 1), (7, 8, 8), (19, 16, 4), (3, 130, 8)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_routing_kernel_matches_reference(t, e, k, renormalize):
    _check_routing(torch.randn(t, e, generator=torch.Generator().manual_seed(t + e)) * 3, k, renormalize)


@pytest.mark.usefixtures("interpreter")
def test_routing_kernel_counts_picks():
    logits = torch.randn(21, 16, generator=torch.Generator().manual_seed(3))
    counts = torch.zeros(16, dtype=torch.int32)
    _, ids = moe_launch.route(logits, 4, True, counts)
    assert torch.equal(counts, torch.bincount(ids.flatten().long(), minlength=16).int())


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("block_m", [16, 32])
def test_align_layout(block_m):
    ids = torch.tensor([[3, 0], [3, 5], [0, 3], [3, 1], [5, 3]], dtype=torch.int32)  # experts 2, 4 get nothing
    counts = moe_launch.count_experts(ids, 6)
    lay = moe_launch.align(ids, counts, 6, block_m)
    used = int(lay.num_padded.item())
    padded = (counts + block_m - 1) // block_m * block_m
    assert used == int(padded.sum()) and used % block_m == 0
    slots, flat = lay.sorted_ids[:used], ids.flatten()
    real = slots[slots < ids.numel()]
    assert sorted(real.tolist()) == list(range(ids.numel()))  # every pair exactly once
    assert int((slots == ids.numel()).sum()) == used - ids.numel()  # the rest is the sentinel
    for b in range(used // block_m):
        block = slots[b * block_m:(b + 1) * block_m]
        block = block[block < ids.numel()]
        assert len(block) and set(flat[block.long()].tolist()) == {int(lay.block_expert[b])}
        assert block.tolist() == sorted(block.tolist())  # stable: pair order within an expert


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pairs_t", [32, 50])  # P = 64: 4 splits of one step; P = 100: 4 splits of 2 (last partial)
def test_align_split_over_several_programs_per_expert(monkeypatch, pairs_t):
    # a scan step of 16 pairs makes each expert's pairs span several splits; the layout must equal what the
    # one-program-per-expert scan gives: each expert's pairs in pair order, from its prefix-summed start
    monkeypatch.setattr(moe_launch, "ALIGN_SMALL_BLOCK", 16)
    monkeypatch.setattr(moe_launch, "ALIGN_LARGE_BLOCK", 16)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 5, (pairs_t, 2), generator=gen, dtype=torch.int32)
    ids[:, 1] = torch.where(ids[:, 1] == ids[:, 0], 6, ids[:, 1])  # distinct picks; experts 5 and 7 get none
    counts = moe_launch.count_experts(ids, 8)
    block_m = 16
    lay = moe_launch.align(ids, counts, 8, block_m)
    flat, p = ids.flatten(), ids.numel()
    want, blocks = [], []
    for e in range(8):
        mine = (flat == e).nonzero().flatten().tolist()
        n_blocks = -(-len(mine) // block_m)
        want += mine + [p] * (n_blocks * block_m - len(mine))
        blocks += [e] * n_blocks
    assert int(lay.num_padded.item()) == len(want)
    assert lay.sorted_ids[:len(want)].tolist() == want
    assert lay.block_expert[:len(blocks)].tolist() == blocks



@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hot", CASES)
def test_fused_moe_matches_reference(dtype, t, e, k, hot):
    h, i = 64, 32
    w13, w2 = moe_weights(e, h, i, dtype)
    x, logits = moe_inputs(t, e, h, dtype, hot=hot)
    out = moe.fused_moe(x, logits, w13, w2, k, impl="triton")
    want = moe.fused_moe(x, logits, w13, w2, k, impl="reference")
    assert out.shape == want.shape and out.dtype == dtype
    torch.testing.assert_close(out, want, **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
def test_one_expert_takes_every_token_over_several_blocks():
    # k=1, expert 2 hot: 40 pairs in one expert = 3 blocks of 16, all other experts empty
    w13, w2 = moe_weights(4, 32, 16, torch.float32)
    x, logits = moe_inputs(40, 4, 32, torch.float32, hot=2)
    assert set(moe.moe_route(logits, 1)[1].flatten().tolist()) == {2}
    torch.testing.assert_close(moe.fused_moe(x, logits, w13, w2, 1, impl="triton"),
                               moe.fused_moe(x, logits, w13, w2, 1, impl="reference"), **TOL[torch.float32])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_experts_with_given_routing_and_other_tiles(dtype):
    # odd H and I (masked k-steps), a larger BLOCK_M and tiles, routing from the reference
    h, i, e, k = 48, 40, 6, 3
    w13, w2 = moe_weights(e, h, i, dtype, seed=5)
    x, logits = moe_inputs(11, e, h, dtype, seed=6)
    weights, ids = reference.moe_route(logits, k, False)
    cfg = MoeConfig(32, GemmTile(16, 32, 2, 4, 1), GemmTile(32, 16, 1, 4, 1))
    out = moe.fused_experts(x, w13, w2, weights, ids, impl="triton", config=cfg)
    torch.testing.assert_close(out, reference.fused_moe(x, w13, w2, weights, ids), **TOL[dtype])


def test_cpu_auto_is_reference_and_checks_inputs():
    w13, w2 = moe_weights(4, 16, 8, torch.float32)
    x, logits = moe_inputs(3, 4, 16, torch.float32)
    weights, ids = reference.moe_route(logits, 2, True)
    torch.testing.assert_close(moe.fused_moe(x, logits, w13, w2, 2), reference.fused_moe(x, w13, w2, weights, ids))
    with pytest.raises(ValueError, match="top_k"):
        moe.fused_moe(x, logits, w13, w2, 5)
    with pytest.raises(ValueError, match="w2 must be"):
        moe.fused_moe(x, logits, w13, w2[:, :, :4], 2)
    with pytest.raises(ValueError, match="impl"):
        moe.fused_moe(x, logits, w13, w2, 2, impl="cuda")


def test_tuner_file_round_trip(tmp_path):
    path = tmp_path / "moe.json"
    bucket = moe.MoeBucket("NVIDIA H200", "bfloat16", 128, 2048, 768, 512)
    cfg = default_config(bucket)
    MoeTuner(str(path)).put(bucket, cfg, {"block_m=16": {}})
    again = MoeTuner(str(path))
    assert again.get(bucket) == cfg and again.get(bucket._replace(pairs=1024)) is None



@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 7, 64, 4096])
def test_gpu_qwen3_vl_moe_shapes(qwen3_moe_weights, t):
    w13, w2 = qwen3_moe_weights
    x, logits = moe_inputs(t, 128, 2048, torch.bfloat16, device="cuda")
    out = moe.fused_moe(x, logits, w13, w2, 8)  # auto: Triton, tiles measured for this bucket
    weights, ids = moe.moe_route(logits, 8)
    rw, rids = reference.moe_route(logits, 8, True)
    assert torch.equal(torch.sort(ids, dim=1).values, torch.sort(rids, dim=1).values)
    torch.testing.assert_close(out, reference.fused_moe(x, w13, w2, weights, ids), **TOL[torch.bfloat16])
    assert any(b.endswith(f"|P<={pow2(t * 8)}") for b in moe.moe_configs())  # the bucket was tuned


@pytest.mark.gpu
def test_gpu_graph_capture_uses_the_tuned_config(qwen3_moe_weights):
    w13, w2 = qwen3_moe_weights
    x, logits = moe_inputs(33, 128, 2048, torch.bfloat16, device="cuda", seed=4)
    moe.tune_fused_moe(w13, w2, 8, [33], logits_dtype=torch.float32)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # a host sync in here would raise
        out = moe.fused_moe(x, logits, w13, w2, 8)
    x.copy_(moe_inputs(33, 128, 2048, torch.bfloat16, device="cuda", seed=5)[0])  # new inputs, same graph
    graph.replay()
    want = reference.fused_moe(x, w13, w2, *moe.moe_route(logits, 8))
    torch.testing.assert_close(out, want, **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_fp32_exact_products(qwen3_moe_weights):
    # one forced config (fp32 tiles compile slowly): the ieee dot must match the fp32 reference closely
    w13, w2 = (w.float()[:16].contiguous() for w in qwen3_moe_weights)
    x, logits = moe_inputs(21, 16, 2048, torch.float32, device="cuda")
    cfg = MoeConfig(16, GemmTile(32, 64, 1, 4, 2), GemmTile(32, 64, 1, 4, 2))
    out = moe.fused_moe(x, logits, w13, w2, 4, config=cfg)
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 4, True))
    torch.testing.assert_close(out, want, **TOL[torch.float32])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hot", [(37, 8, 2, None), (3, 16, 8, None), (17, 4, 2, 0), (5, 8, 1, None)])
def test_sorted_atomic_path_matches_reference(dtype, t, e, k, hot):
    # the down kernel adds each pair into its token's fp32 row (k = 1: the plain sorted path)
    h, i = 64, 32
    w13, w2 = moe_weights(e, h, i, dtype, seed=11)
    x, logits = moe_inputs(t, e, h, dtype, seed=12, hot=hot)
    cfg = dataclasses.replace(INTERPRET_CONFIG, path="sorted_atomic")
    out = moe.fused_moe(x, logits, w13, w2, k, impl="triton", config=cfg)
    torch.testing.assert_close(out, moe.fused_moe(x, logits, w13, w2, k, impl="reference"), **TOL[dtype])


@pytest.mark.gpu
def test_gpu_tuner_keeps_the_faster_path_end_to_end(qwen3_moe_weights):
    w13, w2 = qwen3_moe_weights
    x, logits = moe_inputs(3, 128, 2048, torch.bfloat16, device="cuda", seed=10)
    moe.tune_fused_moe(w13, w2, 8, [3], logits_dtype=torch.float32)
    bucket = str(moe.bucket_of(x, w13, 3 * 8))
    whole = moe.tuner().timings()[bucket]["end_to_end"]
    assert {"sorted", "sorted_atomic", "pairs", "decode", "gemv", "gemv_routed"} <= set(whole)  # each as the whole op
    assert ("gemv_pdl" in whole) == moe_launch.pdl_supported(x.device)
    assert moe.moe_configs()[bucket]["path"] == min(whole, key=whole.get)
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits.float(), 8, True))
    torch.testing.assert_close(moe.fused_moe(x, logits, w13, w2, 8), want, **TOL[torch.bfloat16])


@pytest.mark.usefixtures("interpreter")
def test_measure_config_times_every_path_and_keeps_the_fastest(monkeypatch):
    # the selection logic on CPU: a fake clock that calls the launch (so every candidate really runs) and reports
    # ever smaller times, so the last path timed end to end (gemv; no gemv_pdl on CPU) must be the one kept
    from kernels import moe_config, moe_tuning

    clock = iter(range(1000, 0, -1))
    monkeypatch.setattr(moe_tuning, "time_launch_us", lambda fn: (fn(), float(next(clock)))[1])
    monkeypatch.setattr(moe_config, "_DECODE_TILES", [(32, 32, 1, 4, 1)])
    monkeypatch.setattr(moe_config, "_PAIRS_GATE_UP", [(8, 32, 1, 4, 1), (16, 16, 1, 4, 1)])
    monkeypatch.setattr(moe_config, "_PAIRS_DOWN", [(16, 16, 1, 2, 1)])
    monkeypatch.setattr(moe_config, "_DECODE_FUSED", [(16, 32, 16, 4, 1), (8, 32, 32, 4, 1)])
    monkeypatch.setattr(moe_config, "_GEMV_GATE_UP", [(8, 32, 1, 4, 1)])
    monkeypatch.setattr(moe_config, "_GEMV_DOWN", [(4, 16, 1, 2, 1), (8, 32, 1, 2, 1)])
    e, h, i, k, t = 8, 64, 32, 2, 3
    w13, w2 = moe_weights(e, h, i, torch.float32)
    x, logits = moe_inputs(t, e, h, torch.float32)
    weights, ids = moe.moe_route(logits, k, impl="triton")
    counts = moe_launch.count_experts(ids, e)
    runs = []
    bucket = moe.MoeBucket("cpu", "float32", e, h, i, pow2(t * k))
    cfg, timings = moe_tuning.measure_config(bucket, x, w13, w2, weights, ids, counts, k,
                                             run=lambda c: runs.append(c.path))
    assert runs == ["sorted", "sorted_atomic", "pairs", "decode", "gemv", "gemv_routed"]
    assert cfg.path == "gemv_routed"
    assert cfg.gate_up == GemmTile(8, 32, 1, 4, 1) and cfg.down == GemmTile(8, 32, 1, 2, 1)  # the later (faster) tile
    assert set(timings["end_to_end"]) == {"sorted", "sorted_atomic", "pairs", "decode", "gemv", "gemv_routed"}
    assert "block_m=16" in timings and len(timings["decode"]) == 2 and len(timings["pairs"]["gate_up"]) == 2
    assert len(timings["gemv"]["down"]) == 2




@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("allowed,want_runs,want", [
    ("pairs, sorted", ["sorted", "pairs"], "pairs"),  # the later (faster on the fake clock) of the two
    ("pairs", ["pairs"], "pairs"),
    ("gemv_routed", ["gemv_routed"], "gemv_routed"),
    ("sorted_atomic", ["sorted_atomic"], "sorted_atomic")])
def test_moe_paths_env_restricts_the_paths_timed(monkeypatch, allowed, want_runs, want):
    from kernels import moe_config, moe_tuning

    clock = iter(range(1000, 0, -1))
    monkeypatch.setenv("VLM_MOE_PATHS", allowed)
    monkeypatch.setattr(moe_tuning, "time_launch_us", lambda fn: (fn(), float(next(clock)))[1])
    monkeypatch.setattr(moe_config, "_DECODE_TILES", [(32, 32, 1, 4, 1)])
    for name in ("_PAIRS_GATE_UP", "_PAIRS_DOWN", "_GEMV_GATE_UP", "_GEMV_DOWN"):
        monkeypatch.setattr(moe_config, name, [(8, 32, 1, 4, 1)])
    e, h, i, k, t = 8, 64, 32, 2, 3
    w13, w2 = moe_weights(e, h, i, torch.float32)
    x, logits = moe_inputs(t, e, h, torch.float32)
    weights, ids = moe.moe_route(logits, k, impl="triton")
    runs = []
    bucket = moe.MoeBucket("cpu", "float32", e, h, i, pow2(t * k))
    cfg, timings = moe_tuning.measure_config(bucket, x, w13, w2, weights, ids, moe_launch.count_experts(ids, e), k,
                                             run=lambda c: runs.append(c.path))
    assert runs == want_runs and cfg.path == want
    assert "decode" not in timings and ("pairs" in timings) == ("pairs" in allowed)


def test_moe_paths_env_rejects_unknown_names_and_filters_the_file(monkeypatch, tmp_path):
    from kernels import moe_tuning

    monkeypatch.setenv("VLM_MOE_PATHS", "pairs,magic")
    with pytest.raises(ValueError, match="VLM_MOE_PATHS.*'magic'"):
        moe_tuning.MoeTuner.from_env()
    path = tmp_path / "moe.json"
    monkeypatch.delenv("VLM_MOE_PATHS")
    keep, drop = moe.MoeBucket("d", "bfloat16", 8, 64, 32, 8), moe.MoeBucket("d", "bfloat16", 8, 64, 32, 16)
    tuner = moe_tuning.MoeTuner(str(path))
    tuner.put(keep, dataclasses.replace(INTERPRET_CONFIG, path="pairs"), {})
    tuner.put(drop, dataclasses.replace(INTERPRET_CONFIG, path="gemv_pdl"), {})
    monkeypatch.setenv("VLM_MOE_PATHS", "pairs,sorted")
    again = moe_tuning.MoeTuner(str(path))  # a choice the knob now excludes is measured again, not reused
    assert again.get(keep).path == "pairs" and again.get(drop) is None
