"""Video on CUDA: the demo checkpoints against transformers (fp32) with the same processed video tensors, the engine's
greedy tokens on CUDA (paged attention, CUDA graphs), and every usable ViT backend on frame-group cu_seqlens.

Run on the GPU host: PYTHONPATH=$PWD python -m pytest -q -m gpu tests/models/test_video_gpu.py
"""

from __future__ import annotations

import pytest
import torch
from video_parity_helpers import chat, clip, hf_model_inputs, our_embeds, png

import vit_backends
from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from tests.models.reference_generate import DenseKVContext
from vlm_service.types import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def family(request, tmp_path_factory):
    import transformers

    from vlm_service.demo.checkpoint import ensure_demo_model
    from vlm_service.processor.processor import Processor

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    path = ensure_demo_model(tmp_path_factory.mktemp("demo"), request.param)
    cls = (transformers.Qwen3VLForConditionalGeneration if request.param == "qwen3_vl"
           else transformers.Qwen2_5_VLForConditionalGeneration)
    hf = cls.from_pretrained(path, dtype=torch.float32).cuda().eval()
    proc = Processor.from_pretrained(path)
    messages = chat("Compare", ("image", png(70, 45, 4)), "with", ("video", clip("mp4_odd")))
    return request.param, path, hf, proc, proc.process(messages)


def _ours(path, dtype=torch.float32, backend="sdpa"):
    from vlm_service.models.loader import load_model

    return load_model(path, dtype, torch.device("cuda"), vit_backends.create(backend))


def _hf_kwargs(arch, hf, processed):
    ids = {"image": hf.config.image_token_id, "video": hf.config.video_token_id}
    # mp4_odd: 30 frames at 10 fps sampled at 2 fps -> 6 frames, sampled fps 2.0, 1 s per frame group
    kw = hf_model_inputs(processed, ids, [1.0] if arch == "qwen2_5_vl" else None)
    return {k: v.cuda() for k, v in kw.items()}


def test_fp32_cuda_video_matches_transformers(family):
    arch, path, hf, _, processed = family
    model = _ours(path)
    with torch.no_grad():
        ref = hf(**_hf_kwargs(arch, hf, processed)).logits[0].float().cpu()
        ids = torch.tensor(processed.input_ids, device="cuda")
        ctx = DenseKVContext.for_model(model, ids.shape[0])
        hidden = model.forward(ids, processed.positions.cuda(), ctx, our_embeds(model, processed, "cuda"))
        got = model.compute_logits(hidden).cpu()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)


def test_engine_on_cuda_gives_transformers_greedy_tokens(family):
    arch, path, hf, proc, processed = family
    with torch.no_grad():
        want = hf.generate(**_hf_kwargs(arch, hf, processed), max_new_tokens=16, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(processed.input_ids):].tolist()
    engine = LLMEngine(_ours(path), proc.tokenizer, EngineConfig(num_blocks=256, max_batched_tokens=64), "cuda")
    engine.add("r", processed, SamplingParams(max_tokens=16, ignore_eos=True))
    tokens = []
    while engine.has_work():
        tokens += [t for out in engine.step() if hasattr(out, "token_ids") for t in out.token_ids]
    assert tokens == want


@pytest.mark.parametrize("backend", ["fa3", "flashinfer_cudnn"])
def test_vit_backend_on_video_matches_sdpa(family, backend):
    _, path, _, _, processed = family
    if backend not in vit_backends.usable():
        pytest.skip(f"{backend} not usable here")
    video = next(it for it in processed.images if it.kind == "video")
    pv, grid = video.pixel_values.cuda().bfloat16(), torch.tensor([video.grid_thw])
    (ref, ds_ref), = _ours(path, torch.bfloat16).encode_images(pv, grid)
    (got, ds), = _ours(path, torch.bfloat16, backend).encode_images(pv, grid)
    torch.testing.assert_close(got.float(), ref.float(), atol=3e-2, rtol=3e-2)
    for a, b in zip(ds, ds_ref):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
