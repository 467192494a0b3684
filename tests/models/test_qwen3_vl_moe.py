"""Our Qwen3-VL-MoE against transformers' Qwen3VLMoeForConditionalGeneration on tiny fp32 checkpoints (top-k 2 with
a dense mlp_only layer, top-k 4 with decoder_sparse_step 2): logits at every prompt position, 32 greedy tokens,
and the paged engine's batched greedy tokens."""

from __future__ import annotations

import pytest
import torch
from qwen3_moe_tiny_helpers import MOE_VARIANTS, build_tiny_qwen3_moe
from qwen3_tiny_helpers import hf_positions, make_prompt

import vit_backends
from tests.models.reference_generate import DenseKVContext, generate, multimodal_embeds
from vlm_service.models.layers import GatedMLP
from vlm_service.models.loader import load_model
from vlm_service.models.qwen3_vl_moe import SparseMoeBlock
from vlm_service.processor.positions import image_offsets

PROMPTS = {
    "text_only": [12],
    "one_image": [5, (4, 6), 7],
    "two_images_of_different_sizes": [3, (6, 4), 4, (2, 10), 5],
}


@pytest.fixture(scope="module", params=list(MOE_VARIANTS))
def pair(request, tmp_path_factory):
    """(transformers model, ours) loaded from one tiny checkpoint of the variant."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    path = build_tiny_qwen3_moe(tmp_path_factory.mktemp(request.param), request.param)
    hf = Qwen3VLMoeForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return hf, load_model(path, torch.float32, "cpu", vit_backends.create("sdpa"))


def _hf_inputs(ids, types, pv, grid):
    # an explicit mask: generate() would otherwise take the prompt's own token 0 (pad_token_id below) for padding
    kw = {"input_ids": ids[None], "mm_token_type_ids": types[None], "attention_mask": torch.ones_like(ids)[None]}
    if pv is not None:
        kw.update(pixel_values=pv, image_grid_thw=grid)
    return kw


def test_layers_are_sparse_or_dense_as_transformers_builds_them(pair):
    hf, ours = pair
    for theirs, mine in zip(hf.model.language_model.layers, ours.model.language_model.layers, strict=True):
        sparse = type(theirs.mlp).__name__.endswith("SparseMoeBlock")
        assert isinstance(mine.mlp, SparseMoeBlock if sparse else GatedMLP)
        if sparse:
            assert mine.mlp.top_k == theirs.mlp.gate.top_k
            torch.testing.assert_close(mine.mlp.experts.gate_up_proj, theirs.mlp.experts.gate_up_proj, atol=0, rtol=0)
    assert {type(layer.mlp) for layer in ours.model.language_model.layers} == {SparseMoeBlock, GatedMLP}
    assert ours.spec.architecture == "Qwen3VLMoeForConditionalGeneration"


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_logits_match_transformers(name, pair):
    hf, ours = pair
    ids, types, pv, grid = make_prompt(PROMPTS[name], seed=len(name))
    with torch.no_grad():
        ref = hf(**_hf_inputs(ids, types, pv, grid)).logits[0]  # [T, V]
    pos, _ = hf_positions(hf, ids, types, grid)
    ctx = DenseKVContext.for_model(ours, ids.shape[0])
    got = ours.compute_logits(ours.forward(ids, pos, ctx, multimodal_embeds(ours, ids, pv, grid)))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_greedy_tokens_match_transformers(name, pair):
    hf, ours = pair
    ids, types, pv, grid = make_prompt(PROMPTS[name], seed=len(name))
    with torch.no_grad():
        ref = hf.generate(**_hf_inputs(ids, types, pv, grid), max_new_tokens=32, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, ids.shape[0]:].tolist()
    pos, delta = hf_positions(hf, ids, types, grid)
    assert len(ref) == 32
    assert generate(ours, ids, pos, delta, pv, grid, max_new_tokens=32, eos_token_ids=()) == ref


class _NoTok:
    def decode(self, ids, skip_special_tokens=True):
        return ""


def test_engine_batched_chunked_greedy_tokens_match_transformers(pair):
    """The paged engine (several sequences per step, prefill chunks of 13 tokens) with the MoE layers."""
    from vlm_service.config import EngineConfig
    from vlm_service.engine.engine import LLMEngine
    from vlm_service.types import ProcessedInput, ProcessedVisual, SamplingParams

    hf, ours = pair
    eng = LLMEngine(ours, _NoTok(), EngineConfig(block_size=4, num_blocks=128, max_num_seqs=4, max_batched_tokens=13),
                    "cpu")
    sp = SamplingParams(max_tokens=12, ignore_eos=True)
    refs = {}
    for i, parts in enumerate(PROMPTS.values()):
        ids, types, pv, grid = make_prompt(parts, seed=40 + i)
        with torch.no_grad():
            refs[str(i)] = hf.generate(**_hf_inputs(ids, types, pv, grid), max_new_tokens=12, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)[0, ids.shape[0]:].tolist()
        pos, delta = hf_positions(hf, ids, types, grid)
        grids = [tuple(g) for g in grid.tolist()] if grid is not None else []
        offsets = image_offsets(ids.tolist(), grids, ours.spec.image_token_id, ours.spec.spatial_merge_size)
        images, start = [], 0
        for j, ((t, h, w), offset) in enumerate(zip(grids, offsets)):
            images.append(ProcessedVisual(pv[start:start + t * h * w], (t, h, w), f"{i}-{j}", offset, t * h * w // 4))
            start += t * h * w
        eng.add(str(i), ProcessedInput(ids.tolist(), images, pos, delta), sp)
    got = {rid: [] for rid in refs}
    while eng.has_work():
        for out in eng.step():
            if hasattr(out, "token_ids"):
                got[out.request_id] += list(out.token_ids)
    assert got == refs
