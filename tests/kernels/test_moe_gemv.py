"""Fused MoE for few tokens, the "gemv" paths (kernels/triton/moe_gemv.py: unrolled K loads, a down kernel over all k
picks at once that routes for itself; "gemv_pdl" overlaps the two kernels by programmatic dependent launch):
interpreted on CPU against kernels.reference, every tuner candidate and the PDL path on CUDA."""

import pytest
import torch

from kernels import moe, moe_launch, reference
from kernels.moe_config import GemmTile, MoeConfig
from moe_helpers import TOL, moe_inputs, moe_weights

# gate_up: 3 unrolled steps of 16 over H = 40 (the last masked), I = 24 over block_n 16 (wrapped, unstored rows);
# down: block_k 16 over I = 24 (2 steps, masked) or 32 (one masked step, as 1024 over 768 on the GPU)
GEMV_CFGS = [MoeConfig(1, GemmTile(16, 16, 1, 4, 1), GemmTile(4, 16, 1, 2, 1), "gemv"),
             MoeConfig(1, GemmTile(8, 64, 1, 2, 1), GemmTile(8, 32, 1, 4, 1), "gemv"),
             MoeConfig(1, GemmTile(16, 16, 1, 4, 1), GemmTile(4, 16, 1, 2, 1), "gemv_routed")]  # route kernel first
CASES = [  # (T, E, k, hot): top-k 1 and 8, k not a power of two, a hot expert, E not a power of two
    (1, 8, 8, None), (1, 8, 1, None), (3, 130, 8, None), (5, 16, 3, None), (4, 8, 2, 5), (8, 16, 1, 3)]


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hot", CASES)
def test_gemv_path_matches_reference(dtype, t, e, k, hot):
    h, i = 40, 24
    w13, w2 = moe_weights(e, h, i, dtype, seed=31)
    x, logits = moe_inputs(t, e, h, dtype, seed=32, hot=hot)
    if hot is not None:  # every token's first pick is the hot expert; most experts get nothing
        assert set(reference.moe_route(logits, 1, True)[1].flatten().tolist()) == {hot}
    want = moe.fused_moe(x, logits, w13, w2, k, impl="reference")
    for cfg in GEMV_CFGS:
        out = moe.fused_moe(x, logits, w13, w2, k, impl="triton", config=cfg)
        assert out.shape == want.shape and out.dtype == dtype
        torch.testing.assert_close(out, want, **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("renormalize", [True, False])
def test_gemv_down_routes_like_the_route_kernel(renormalize):
    # the down kernel routes for itself: with a one-hot intermediate [P, I] (row p = e_0) its output row t is
    # sum_j weight_j * w2[e_j, :, 0] rounded per pick, which names both the experts and the weights it picked
    t, e, k, h, i = 3, 130, 8, 16, 8
    _, w2 = moe_weights(e, h, i, torch.float32, seed=33)
    _, logits = moe_inputs(t, e, h, torch.float32, seed=34)
    inter = torch.zeros(t * k, i)
    inter[:, 0] = 1.0
    out = torch.empty(t, h)
    moe_launch.gemv_down(inter, w2, k, GemmTile(4, 8, 1, 2, 1), out, logits=logits, renormalize=renormalize)
    rw, rids = moe.moe_route(logits, k, renormalize, impl="triton")
    want = (w2[rids.long(), :, 0] * rw[:, :, None]).sum(dim=1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_path_with_given_routing(dtype):
    h, i, e, k = 48, 40, 6, 3
    w13, w2 = moe_weights(e, h, i, dtype, seed=35)
    x, logits = moe_inputs(5, e, h, dtype, seed=36)
    weights, ids = reference.moe_route(logits, k, False)
    want = reference.fused_moe(x, w13, w2, weights, ids)
    for cfg in GEMV_CFGS:
        torch.testing.assert_close(moe.fused_experts(x, w13, w2, weights, ids, impl="triton", config=cfg), want,
                                   **TOL[dtype])


def test_gemv_candidates_are_valid_tiles():
    from kernels.moe_config import gemv_candidates

    for which in ("gate_up", "down"):
        tiles = gemv_candidates(which)
        assert tiles and len(set(tiles)) == len(tiles)
        for tl_ in tiles:  # registers: one step's tile per thread stays small (down: 8 picks of Qwen3-VL-MoE)
            per_thread = tl_.block_n * tl_.block_k * (2 if which == "gate_up" else 8) // (32 * tl_.num_warps)
            assert per_thread <= 64, tl_
    for path in ("gemv", "gemv_pdl"):
        cfg = MoeConfig(1, gemv_candidates("gate_up")[0], gemv_candidates("down")[0], path)
        assert MoeConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 8])
def test_gpu_gemv_paths_every_candidate(qwen3_moe_weights, t):
    from kernels.moe_config import gemv_candidates

    w13, w2 = qwen3_moe_weights
    x, logits = moe_inputs(t, 128, 2048, torch.bfloat16, device="cuda", seed=37)
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 8, True))
    paths = ["gemv", "gemv_routed"] + (["gemv_pdl"] if moe_launch.pdl_supported(x.device) else [])
    gate_ups, downs = gemv_candidates("gate_up"), gemv_candidates("down")
    pairs = [(gu, downs[0]) for gu in gate_ups] + [(gate_ups[0], dn) for dn in downs[1:]]  # every tile once
    for gu, dn in pairs:
        for path in paths:
            out = moe.fused_moe(x, logits, w13, w2, 8, config=MoeConfig(1, gu, dn, path))
            torch.testing.assert_close(out, want, **TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("routed", [False, True])
def test_gpu_gemv_pdl_in_a_graph_with_new_routing(qwen3_moe_weights, routed):
    # the down kernel reads its w2 rows (and, routed, the route kernel's ids) before griddepcontrol.wait: a replay
    # with new logits must still route anew and see this replay's intermediate (a race: stale or half-written rows)
    from kernels.moe_config import gemv_candidates

    w13, w2 = qwen3_moe_weights
    path = "gemv_routed" if routed else ("gemv_pdl" if moe_launch.pdl_supported(w13.device) else "gemv")
    cfg = MoeConfig(1, gemv_candidates("gate_up")[0], gemv_candidates("down")[0], path)
    x, logits = moe_inputs(2, 128, 2048, torch.bfloat16, device="cuda", seed=38)
    moe.fused_moe(x, logits, w13, w2, 8, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe.fused_moe(x, logits, w13, w2, 8, config=cfg)
    for seed in (39, 40, 41):
        new_x, new_logits = moe_inputs(2, 128, 2048, torch.bfloat16, device="cuda", seed=seed)
        x.copy_(new_x)
        logits.copy_(new_logits)
        graph.replay()
        want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 8, True))
        torch.testing.assert_close(out, want, **TOL[torch.bfloat16])
