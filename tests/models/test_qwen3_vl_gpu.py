"""Qwen3-VL on CUDA: the tiny checkpoint against transformers (fp32), bf16 sanity, and every usable ViT backend.

Run on the GPU host: pytest tests/models/test_qwen3_vl_gpu.py -m gpu
"""

from __future__ import annotations

import pytest
import torch
from qwen3_tiny_helpers import hf_positions, make_prompt

import vit_backends
from tests.models.reference_generate import DenseKVContext, generate, multimodal_embeds
from vlm_service.models.loader import load_model

pytestmark = pytest.mark.gpu

PARTS = [3, (6, 4), 4, (2, 10), 5]


def _ours(path, dtype=torch.float32, backend="sdpa"):
    return load_model(path, dtype, "cuda", vit_backends.create(backend))


def _logits(model, ids, pos, pv, grid):
    ids, pos, pv, grid = ids.cuda(), pos.cuda(), pv.cuda(), grid
    ctx = DenseKVContext.for_model(model, ids.shape[0])
    return model.compute_logits(model.forward(ids, pos, ctx, multimodal_embeds(model, ids, pv, grid))).cpu()


def test_fp32_cuda_matches_transformers(tiny_qwen3_dir, hf_qwen3):
    torch.backends.cuda.matmul.allow_tf32 = False
    ids, types, pv, grid = make_prompt(PARTS, seed=1)
    with torch.no_grad():
        ref = hf_qwen3(input_ids=ids[None], mm_token_type_ids=types[None], pixel_values=pv,
                       image_grid_thw=grid).logits[0]
    pos, delta = hf_positions(hf_qwen3, ids, types, grid)
    model = _ours(tiny_qwen3_dir)
    torch.testing.assert_close(_logits(model, ids, pos, pv, grid), ref, atol=1e-3, rtol=1e-3)
    with torch.no_grad():
        want = hf_qwen3.generate(input_ids=ids[None], mm_token_type_ids=types[None], pixel_values=pv,
                                 image_grid_thw=grid, max_new_tokens=32, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, ids.shape[0]:].tolist()
    assert generate(model, ids, pos, delta, pv, grid, max_new_tokens=32, eos_token_ids=()) == want


def test_bf16_close_to_fp32(tiny_qwen3_dir, hf_qwen3):
    ids, types, pv, grid = make_prompt(PARTS, seed=2)
    pos, _ = hf_positions(hf_qwen3, ids, types, grid)
    full = _logits(_ours(tiny_qwen3_dir), ids, pos, pv, grid)
    half = _logits(_ours(tiny_qwen3_dir, torch.bfloat16), ids, pos, pv, grid)
    cos = torch.nn.functional.cosine_similarity(full, half, dim=-1)
    assert cos.min() > 0.99, cos.min()


@pytest.mark.parametrize("backend", ["fa3", "flashinfer_cudnn"])
def test_vit_backend_matches_sdpa(backend, tiny_qwen3_dir):
    if backend not in vit_backends.usable():
        pytest.skip(f"{backend} not usable here")
    _, _, pv, grid = make_prompt(PARTS, seed=3)
    ref = _ours(tiny_qwen3_dir, torch.bfloat16).encode_images(pv.cuda(), grid)
    got = _ours(tiny_qwen3_dir, torch.bfloat16, backend).encode_images(pv.cuda(), grid)
    for (e_ref, ds_ref), (e, ds) in zip(ref, got):
        torch.testing.assert_close(e.float(), e_ref.float(), atol=3e-2, rtol=3e-2)
        for a, b in zip(ds, ds_ref):
            torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
