"""Qwen3-VL-MoE on CUDA (the Triton fused-MoE path): the tiny checkpoint against transformers in fp32, and a small
random bf16 MoE model whose greedy tokens are the same eager, with decode CUDA graphs, and with graphs + overlapped
scheduling (the routing must not sync to the host for graph capture to work at all).

Run on the GPU host: pytest -q -m gpu tests/models/test_qwen3_vl_moe_gpu.py
"""

from __future__ import annotations

import pytest
import torch
from qwen3_moe_tiny_helpers import build_tiny_qwen3_moe
from qwen3_tiny_helpers import hf_positions, make_prompt

import vit_backends
from tests.models.reference_generate import DenseKVContext, generate, multimodal_embeds
from vlm_service.models.layers import seeded_weights_
from vlm_service.models.loader import load_model, normalize_config
from vlm_service.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from vlm_service.processor.positions import mrope_positions
from vlm_service.types import ProcessedInput, ProcessedVisual, SamplingParams

pytestmark = pytest.mark.gpu

IMAGE, VSTART, VEND = 1000, 1001, 1002


@pytest.mark.parametrize("variant", ["k2_mlp_only", "k4_sparse_step"])
def test_fp32_cuda_matches_transformers(variant, tmp_path):
    from transformers import Qwen3VLMoeForConditionalGeneration as HF

    torch.backends.cuda.matmul.allow_tf32 = False
    path = build_tiny_qwen3_moe(tmp_path / variant, variant)
    hf = HF.from_pretrained(path, dtype=torch.float32).eval()
    ids, types, pv, grid = make_prompt([3, (6, 4), 4, (2, 10), 5], seed=1)
    kw = dict(input_ids=ids[None], mm_token_type_ids=types[None], attention_mask=torch.ones_like(ids)[None],
              pixel_values=pv, image_grid_thw=grid)
    with torch.no_grad():
        ref = hf(**kw).logits[0]
        want = hf.generate(**kw, max_new_tokens=32, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, ids.shape[0]:].tolist()
    pos, delta = hf_positions(hf, ids, types, grid)
    model = load_model(path, torch.float32, "cuda", vit_backends.create("sdpa"))
    ctx = DenseKVContext.for_model(model, ids.shape[0])
    got = model.compute_logits(model.forward(ids.cuda(), pos.cuda(), ctx,
                                             multimodal_embeds(model, ids.cuda(), pv.cuda(), grid))).cpu()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
    assert generate(model, ids, pos, delta, pv.cuda(), grid, max_new_tokens=32, eos_token_ids=()) == want


def _small_moe_config() -> dict:
    """head_dim 64 (a FlashInfer decode size), 16 experts, top-8, one dense layer."""
    rope = {"mrope_interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"}
    return normalize_config({
        "architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe",
        "text_config": {"hidden_size": 256, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024, "max_position_embeddings": 4096,
                        "rope_theta": 1000000.0, "rope_scaling": rope, "num_experts": 16, "num_experts_per_tok": 8,
                        "moe_intermediate_size": 128, "norm_topk_prob": True, "mlp_only_layers": [2]},
        "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                          "out_hidden_size": 256, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        "image_token_id": IMAGE, "vision_start_token_id": VSTART, "vision_end_token_id": VEND,
        "tie_word_embeddings": False,
    })


def _prompt(seed: int, grids: list[tuple[int, int, int]]) -> ProcessedInput:
    g = torch.Generator().manual_seed(seed)
    ids, images = torch.randint(0, 900, (5 + seed,), generator=g).tolist(), []
    for j, (t, h, w) in enumerate(grids):
        ids.append(VSTART)
        pv = torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=g)
        images.append(ProcessedVisual(pv, (t, h, w), f"{seed}-{j}", len(ids), t * h * w // 4))
        ids += [IMAGE] * (t * h * w // 4) + [VEND] + torch.randint(0, 900, (3,), generator=g).tolist()
    pos, delta = mrope_positions(ids, grids, IMAGE, VSTART, 2)
    return ProcessedInput(ids, images, pos, delta)


class _NoTok:
    def decode(self, ids, skip_special_tokens=True):
        return ""


def test_cuda_graphs_and_overlap_do_not_change_moe_tokens():
    from vlm_service.config import EngineConfig
    from vlm_service.engine.engine import LLMEngine

    model = Qwen3VLMoeForConditionalGeneration(_small_moe_config(), torch.bfloat16, torch.device("cuda"),
                                               vit_backends.create("sdpa"))
    seeded_weights_(model, 7, matrix=0.06, norm=0.1, bias=0.02)
    model.weights_loaded()
    prompts = [_prompt(s, g) for s, g in enumerate([[(1, 6, 4)], [], [(1, 4, 4), (1, 8, 4)], [], [(1, 4, 6)]] * 3)]
    sp = SamplingParams(max_tokens=16, ignore_eos=True)
    runs = []
    for graphs, overlap in ((False, False), (True, False), (True, True)):
        cfg = EngineConfig(num_blocks=512, max_num_seqs=16, cuda_graphs=graphs, overlap_scheduling=overlap)
        eng = LLMEngine(model, _NoTok(), cfg, "cuda")
        assert (eng.runner.graphs is not None) == graphs
        for i, p in enumerate(prompts):
            eng.add(str(i), p, sp)
        got = {str(i): [] for i in range(len(prompts))}
        while eng.has_work():
            for out in eng.step():
                if hasattr(out, "token_ids"):
                    got[out.request_id] += list(out.token_ids)
        assert all(len(t) == 16 for t in got.values())
        runs.append(got)
    assert runs[0] == runs[1] == runs[2]
