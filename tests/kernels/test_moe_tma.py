"""Fused MoE, the sorted path with the weight tiles loaded through TMA tensor descriptors (GemmTile.tma): interpreted
on CPU against kernels.reference (the interpreter reads host descriptors, zero padding included), every TMA
candidate of the tuner on CUDA (sm_90+) at prefill shapes of Qwen3-VL-30B-A3B."""

import dataclasses

import pytest
import torch

from kernels import moe, moe_launch, reference
from kernels.moe_config import GemmTile, MoeConfig
from moe_helpers import TOL, moe_inputs, moe_weights

# H = 48 over block_k 32: the second k-step reads past K (TMA zero fill); I = 40 over gate_up block_n 16 and
# down's K = 40 over 32: the last column block reads rows of the next expert / past the end (never stored)
TMA_CFG = MoeConfig(16, GemmTile(16, 32, 2, 4, 1, True), GemmTile(32, 32, 1, 4, 1, True))
CASES = [(5, 8, 1, None), (37, 8, 2, None), (3, 16, 8, None), (20, 8, 1, 3), (17, 4, 2, 0)]


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k,hot", CASES)
def test_tma_sorted_path_matches_reference(dtype, t, e, k, hot):
    h, i = 48, 40
    w13, w2 = moe_weights(e, h, i, dtype, seed=41)
    x, logits = moe_inputs(t, e, h, dtype, seed=42, hot=hot)
    want = moe.fused_moe(x, logits, w13, w2, k, impl="reference")
    for path in ("sorted", "sorted_atomic"):
        out = moe.fused_moe(x, logits, w13, w2, k, impl="triton", config=dataclasses.replace(TMA_CFG, path=path))
        torch.testing.assert_close(out, want, **TOL[dtype])


@pytest.mark.usefixtures("interpreter")
def test_tma_and_pointer_tiles_mix():
    # one GEMM by TMA, the other by pointers: the two flags are independent
    h, i, e, k = 64, 32, 6, 3
    w13, w2 = moe_weights(e, h, i, torch.float32, seed=43)
    x, logits = moe_inputs(11, e, h, torch.float32, seed=44)
    weights, ids = reference.moe_route(logits, k, True)
    want = reference.fused_moe(x, w13, w2, weights, ids)
    for gu_tma, dn_tma in ((True, False), (False, True)):
        cfg = MoeConfig(32, GemmTile(16, 32, 1, 4, 1, gu_tma), GemmTile(32, 16, 1, 4, 1, dn_tma))
        torch.testing.assert_close(moe.fused_experts(x, w13, w2, weights, ids, impl="triton", config=cfg), want,
                                   **TOL[torch.float32])


def test_tma_descriptor_needs_packed_rows_and_json_keeps_the_flag():
    w = torch.zeros(4, 8, 32)
    with pytest.raises(ValueError, match="packed"):
        moe_launch._weight_desc(w[:, :4], GemmTile(8, 32, 1, 4, 1, True))
    assert MoeConfig.from_json(TMA_CFG.to_json()) == TMA_CFG
    old = TMA_CFG.to_json()
    for tile in ("gate_up", "down"):
        old[tile] = {k: v for k, v in old[tile].items() if k != "tma"}  # files written before the flag
    assert MoeConfig.from_json(old).gate_up.tma is False


@pytest.mark.gpu
@pytest.mark.parametrize("block_m", [64, 128])
def test_gpu_every_tma_candidate(qwen3_moe_weights, block_m):
    from kernels.moe_config import tile_candidates

    w13, w2 = qwen3_moe_weights
    if not moe_launch.pdl_supported(w13.device):
        pytest.skip("TMA weight tiles need sm_90+")
    x, logits = moe_inputs(1000, 128, 2048, torch.bfloat16, device="cuda", seed=45)
    want = reference.fused_moe(x, w13, w2, *reference.moe_route(logits, 8, True))
    gate_ups = [t for t in tile_candidates(block_m, "gate_up") if t.tma]
    downs = [t for t in tile_candidates(block_m, "down") if t.tma]
    assert gate_ups and downs
    for gu in gate_ups:
        for dn in downs:
            out = moe.fused_moe(x, logits, w13, w2, 8, config=MoeConfig(block_m, gu, dn))
            torch.testing.assert_close(out, want, **TOL[torch.bfloat16])
