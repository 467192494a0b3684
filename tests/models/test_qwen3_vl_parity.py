"""Our Qwen3-VL against transformers on a tiny fp32 checkpoint: logits at every prompt position and 32 greedy tokens."""

from __future__ import annotations

import pytest
import torch
from qwen3_tiny_helpers import hf_positions, make_prompt

from tests.models.reference_generate import DenseKVContext, generate, multimodal_embeds

PROMPTS = {
    "text_only": [12],
    "one_image": [5, (4, 6), 7],
    "two_images_non_square": [3, (6, 4), 4, (2, 10), 5],
    "image_first": [(8, 6), 6],
    "image_last": [9, (4, 4)],
}


def _hf_inputs(ids, types, pv, grid):
    kw = {"input_ids": ids[None], "mm_token_type_ids": types[None]}
    if pv is not None:
        kw.update(pixel_values=pv, image_grid_thw=grid)
    return kw


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_logits_match_transformers(name, hf_qwen3, our_qwen3):
    ids, types, pv, grid = make_prompt(PROMPTS[name], seed=len(name))
    with torch.no_grad():
        ref = hf_qwen3(**_hf_inputs(ids, types, pv, grid)).logits[0]  # [T, V]
    pos, _ = hf_positions(hf_qwen3, ids, types, grid)
    ctx = DenseKVContext.for_model(our_qwen3, ids.shape[0])
    hidden = our_qwen3.forward(ids, pos, ctx, multimodal_embeds(our_qwen3, ids, pv, grid))
    ours = our_qwen3.compute_logits(hidden)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["text_only", "two_images_non_square", "image_first"])
def test_greedy_tokens_match_transformers(name, hf_qwen3, our_qwen3):
    ids, types, pv, grid = make_prompt(PROMPTS[name], seed=len(name))
    with torch.no_grad():
        ref = hf_qwen3.generate(**_hf_inputs(ids, types, pv, grid), max_new_tokens=32, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, ids.shape[0]:].tolist()
    pos, delta = hf_positions(hf_qwen3, ids, types, grid)
    ours = generate(our_qwen3, ids, pos, delta, pv, grid, max_new_tokens=32, eos_token_ids=())
    assert len(ref) == 32
    assert ours == ref


def test_image_embeddings_and_deepstack_match(hf_qwen3, our_qwen3):
    _, _, pv, grid = make_prompt([(6, 4), (2, 10)])
    with torch.no_grad():
        ref = hf_qwen3.model.get_image_features(pv, grid, return_dict=True)
    ours = our_qwen3.encode_images(pv, grid)
    assert [e.shape[0] for e, _ in ours] == [6, 5]
    torch.testing.assert_close(torch.cat([e for e, _ in ours]), torch.cat(ref.pooler_output), atol=1e-5, rtol=1e-5)
    for i, ds in enumerate(ref.deepstack_features):
        torch.testing.assert_close(torch.cat([d[i] for _, d in ours]), ds, atol=1e-5, rtol=1e-5)


def test_spec_reflects_config(our_qwen3):
    spec = our_qwen3.spec
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (3, 4, 2, 16)
    assert (spec.image_token_id, spec.vision_start_token_id, spec.vocab_size) == (500, 502, 512)
    assert (spec.spatial_merge_size, spec.patch_size, spec.temporal_patch_size) == (2, 16, 2)
