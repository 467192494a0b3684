"""Fused MoE for few tokens: the "pairs" path (a GEMV per token-expert pair, routing fused into gate_up, the k-sum
into down) and the "decode" path (one kernel per (I-block, pair), fp32 atomics), interpreted on CPU against
kernels.reference; every tuner candidate of both on CUDA with Qwen3-VL-30B-A3B shapes."""

import dataclasses

import pytest
import torch

from kernels import moe, moe_launch, reference
from kernels.moe_config import INTERPRET_CONFIG, GemmTile, MoeConfig
from moe_helpers import CASES, TOL, moe_inputs, moe_weights


# ---- the pairs path (few tokens: GEMV per pair, routing fused into gate_up, k-sum into down) -----------------------

PAIRS_CFG = MoeConfig(1, GemmTile(8, 32, 1, 4, 1), GemmTile(16, 16, 1, 2, 1), "pairs")


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hot", CASES)
def test_pairs_path_matches_reference(dtype, t, e, k, hot):
    h, i = 64, 48  # I not a multiple of gate_up's block_n: wrapped, unstored columns
    w13, w2 = moe_weights(e, h, i, dtype, seed=2)
    x, logits = moe_inputs(t, e, h, dtype, seed=3, hot=hot)
    out = moe.fused_moe(x, logits, w13, w2, k, impl="triton", config=PAIRS_CFG)
    torch.testing.assert_close(out, moe.fused_moe(x, logits, w13, w2, k, impl="reference"), **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("renormalize", [True, False])
def test_pairs_path_routes_like_the_route_kernel(renormalize):
    # the fused routing must pick the same experts with the same weights: compare the scratch ids / weights
    t, e, k, h, i = 3, 130, 8, 32, 16  # E not a power of two
    w13, w2 = moe_weights(e, h, i, torch.float32)
    x, logits = moe_inputs(t, e, h, torch.float32, seed=9)
    ids, weights = torch.empty(t * k, dtype=torch.int32), torch.empty(t * k, dtype=torch.float32)
    inter = torch.empty(t * k, i)
    moe_launch.pairs_gate_up(x, w13, k, PAIRS_CFG.gate_up, inter, ids, weights, logits, renormalize)
    rw, rids = moe.moe_route(logits, k, renormalize, impl="triton")
    assert torch.equal(ids.view(t, k), rids)
    torch.testing.assert_close(weights.view(t, k), rw, rtol=1e-6, atol=1e-7)
    want = moe.fused_moe(x, logits, w13, w2, k, renormalize, impl="reference")
    torch.testing.assert_close(moe.fused_moe(x, logits, w13, w2, k, renormalize, impl="triton", config=PAIRS_CFG),
                               want, **TOL[torch.float32])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pairs_path_with_given_routing_and_masked_k(dtype):
    # odd H and I: both kernels' k-steps are masked (H=48 over block_k 32, I=40 over 16 then 32)
    h, i, e, k = 48, 40, 6, 3
    w13, w2 = moe_weights(e, h, i, dtype, seed=5)
    x, logits = moe_inputs(5, e, h, dtype, seed=6)
    weights, ids = reference.moe_route(logits, k, False)
    want = reference.fused_moe(x, w13, w2, weights, ids)
    for down in (GemmTile(16, 16, 1, 2, 1), GemmTile(4, 32, 1, 1, 1)):
        cfg = dataclasses.replace(PAIRS_CFG, down=down)
        torch.testing.assert_close(moe.fused_experts(x, w13, w2, weights, ids, impl="triton", config=cfg), want,
                                   **TOL[dtype])


def test_config_json_keeps_the_path_and_reads_old_files():
    cfg = MoeConfig.from_json(PAIRS_CFG.to_json())
    assert cfg == PAIRS_CFG and cfg.path == "pairs"
    old = {k: v for k, v in INTERPRET_CONFIG.to_json().items() if k != "path"}
    assert MoeConfig.from_json(old).path == "sorted"
    with pytest.raises(ValueError, match="path"):
        MoeConfig.from_json({**old, "path": "magic"})


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 8])
def test_gpu_pairs_path_every_candidate(qwen3_moe_weights, t):
    from kernels.moe_config import pairs_candidates

    w13, w2 = qwen3_moe_weights
    x, logits = moe_inputs(t, 128, 2048, torch.bfloat16, device="cuda", seed=7)
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 8, True))
    for gu, dn in zip(pairs_candidates("gate_up"), pairs_candidates("down")):
        out = moe.fused_moe(x, logits, w13, w2, 8, config=MoeConfig(1, gu, dn, "pairs"))
        torch.testing.assert_close(out, want, **TOL[torch.bfloat16])


def _check_replay_with_new_routing(weights, cfg: MoeConfig, seeds: tuple[int, int]) -> None:
    """fused_moe (k=8, bf16, 2 tokens) captured in a CUDA graph, then replayed after new router logits were copied
    into its input: the replay must route anew and match the reference."""
    w13, w2 = weights
    x, logits = moe_inputs(2, 128, 2048, torch.bfloat16, device="cuda", seed=seeds[0])
    moe.fused_moe(x, logits, w13, w2, 8, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe.fused_moe(x, logits, w13, w2, 8, config=cfg)
    logits.copy_(moe_inputs(2, 128, 2048, torch.bfloat16, device="cuda", seed=seeds[1])[1])  # same graph
    graph.replay()
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 8, True))
    torch.testing.assert_close(out, want, **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_pairs_path_in_a_graph(qwen3_moe_weights):
    from kernels.moe_config import pairs_candidates

    cfg = MoeConfig(1, pairs_candidates("gate_up")[0], pairs_candidates("down")[0], "pairs")
    _check_replay_with_new_routing(qwen3_moe_weights, cfg, seeds=(8, 9))


# ---- the decode path (one kernel per (I-block, pair): gate/up, silu*up, down partial product, fp32 atomics) --------

DECODE_CFG = MoeConfig(1, GemmTile(16, 32, 1, 4, 1), GemmTile(16, 16, 1, 4, 1), "decode")
DECODE_CASES = [  # M = 1..8 tokens; top-k 1 and 8; a hot expert (others get nothing); more experts than pairs
    (1, 8, 1, None), (1, 8, 8, None), (2, 16, 8, None), (3, 8, 2, 5), (5, 32, 4, None), (7, 8, 8, 0),
    (8, 16, 1, 3), (8, 130, 8, None)]


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hot", DECODE_CASES)
def test_decode_path_matches_reference(dtype, t, e, k, hot):
    h, i = 48, 40  # odd sizes: H = 1.5 k-steps of 32 (masked), I = 2.5 blocks of BLOCK_I = 16 (ragged)
    w13, w2 = moe_weights(e, h, i, dtype, seed=21)
    x, logits = moe_inputs(t, e, h, dtype, seed=22, hot=hot)
    if hot is not None:
        assert set(reference.moe_route(logits, 1, True)[1].flatten().tolist()) == {hot}
    out = moe.fused_moe(x, logits, w13, w2, k, impl="triton", config=DECODE_CFG)
    want = moe.fused_moe(x, logits, w13, w2, k, impl="reference")
    assert out.shape == want.shape and out.dtype == dtype
    torch.testing.assert_close(out, want, **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("renormalize", [True, False])
def test_decode_path_with_given_routing_and_masked_tiles(dtype, renormalize):
    # fused_experts (ids read, not routed); H = 40 is masked in both the k-steps (32) and the w2 row steps (32)
    h, i, e, k = 40, 24, 6, 3
    w13, w2 = moe_weights(e, h, i, dtype, seed=23)
    x, logits = moe_inputs(4, e, h, dtype, seed=24)
    weights, ids = reference.moe_route(logits, k, renormalize)
    want = reference.fused_moe(x, w13, w2, weights, ids)
    for down in (GemmTile(32, 8, 1, 4, 1), GemmTile(64, 8, 1, 4, 1)):
        cfg = MoeConfig(1, GemmTile(8, 32, 1, 4, 1), down, "decode")
        torch.testing.assert_close(moe.fused_experts(x, w13, w2, weights, ids, impl="triton", config=cfg), want,
                                   **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
def test_decode_path_sums_every_i_block_once():
    # one expert, k=1, weight 1 (renormalised): out must equal the plain dense MLP of that expert; I = 3 blocks
    # of 16 with a ragged last one, so a block added twice or skipped is visible
    h, i, e = 32, 40, 2
    w13, w2 = moe_weights(e, h, i, torch.float32, seed=25)
    x, logits = moe_inputs(2, e, h, torch.float32, seed=26, hot=1)
    out = moe.fused_moe(x, logits, w13, w2, 1, impl="triton", config=DECODE_CFG)
    gate, up = (x @ w13[1].T).split(i, dim=-1)
    dense = (torch.nn.functional.silu(gate) * up) @ w2[1].T
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_decode_candidates_are_valid_configs():
    from kernels.moe_config import decode_candidates

    cands = decode_candidates()
    assert len(set(cands)) == len(cands) and all(c.path == "decode" for c in cands)
    for c in cands:  # the down tile records BLOCK_I; every tile keeps its accumulators in registers
        assert c.down.block_k == c.gate_up.block_n
        assert 2 * c.gate_up.block_n * c.gate_up.block_k <= 64 * 32 * c.gate_up.num_warps
        assert MoeConfig.from_json(c.to_json()) == c


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 3, 8])
def test_gpu_decode_path_every_candidate(qwen3_moe_weights, t):
    from kernels.moe_config import decode_candidates

    w13, w2 = qwen3_moe_weights
    x, logits = moe_inputs(t, 128, 2048, torch.bfloat16, device="cuda", seed=27)
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 8, True))
    for cfg in decode_candidates():
        torch.testing.assert_close(moe.fused_moe(x, logits, w13, w2, 8, config=cfg), want, **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_decode_path_in_a_graph_fp32_and_k1(qwen3_moe_weights):
    from kernels.moe_config import decode_candidates

    cfg = decode_candidates()[0]
    _check_replay_with_new_routing(qwen3_moe_weights, cfg, seeds=(28, 29))
    w13f, w2f = (w.float()[:16].contiguous() for w in qwen3_moe_weights)
    xf, lf = moe_inputs(5, 16, 2048, torch.float32, device="cuda", seed=30)
    for k in (1, 8):
        want = reference.fused_moe(xf, w13f, w2f, *reference.moe_route(lf, k, True))
        torch.testing.assert_close(moe.fused_moe(xf, lf, w13f, w2f, k, config=cfg), want, **TOL[torch.float32])
