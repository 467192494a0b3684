"""Video, model half: transformers and our model fed the same processed tensors (our processor's pixel_values_videos,
video_grid_thw, input_ids) give the same logits (fp32, 1e-4) and the same 32 greedy tokens, on both dense families
and the MoE family (the Qwen3-VL demo checkpoint's processor files with a tiny Qwen3VLMoe model in it).

transformers computes its own MRoPE positions (get_rope_index from mm_token_type_ids and the grids, with
second_per_grid_ts for Qwen2.5-VL), so equal logits also check our temporal positions and Qwen3-VL's timestamp
layout. Our greedy tokens come from the real engine with a small token budget, so chunked prefill cuts through the
video's frame groups. The processor half (pixels against transformers' video processor) needs torchvision: see
tests/processor/test_video_processor_gpu.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("av")

from video_parity_helpers import chat, clip, hf_model_inputs, our_embeds, png  # noqa: E402

from vlm_service.config import EngineConfig  # noqa: E402
from vlm_service.engine.engine import LLMEngine  # noqa: E402
from tests.models.reference_generate import DenseKVContext  # noqa: E402
from vlm_service.types import SamplingParams, VideoInput  # noqa: E402

PROMPTS = {
    "video_alone": lambda: chat(("video", clip("mp4_odd"))),
    "video_then_text": lambda: chat(("video", clip("vfr")), "What happens in this clip?"),
    "text_then_video": lambda: chat("Describe the motion:", ("video", clip("webm"))),
    "video_and_image": lambda: chat("Compare", ("image", png(70, 45, 4)), "with", ("video", clip("mp4_odd"))),
    "two_videos": lambda: chat(("video", clip("webm")), "and", ("video", clip("vfr")), "differ how?"),
}
FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen3_vl_moe")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(arch, transformers model, our model, our processor) for one demo checkpoint, fp32 on CPU."""
    import vit_backends
    from vlm_service.demo.checkpoint import ensure_demo_model
    from vlm_service.models.loader import load_model
    from vlm_service.processor.processor import Processor

    arch = request.param
    path = ensure_demo_model(tmp_path_factory.mktemp(f"demo_{arch}"), arch.removesuffix("_moe"))
    import transformers

    if arch == "qwen3_vl_moe":  # k=2 over 6 experts, layer 1 dense
        from qwen3_moe_tiny_helpers import moe_from_demo

        path = moe_from_demo(path, tmp_path_factory.mktemp("moe"))
    cls = {"qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
           "qwen3_vl_moe": transformers.Qwen3VLMoeForConditionalGeneration,
           "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[arch]
    hf = cls.from_pretrained(path, dtype=torch.float32).eval()
    ours = load_model(path, torch.float32, torch.device("cpu"), vit_backends.create("sdpa"))
    if arch == "qwen3_vl_moe":  # really the sparse model on both sides
        from vlm_service.models.qwen3_vl_moe import SparseMoeBlock

        assert type(hf.model.language_model.layers[0].mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
        assert sum(isinstance(m, SparseMoeBlock) for m in ours.modules()) == len(hf.model.language_model.layers) - 1
    return arch, hf, ours, Processor.from_pretrained(path)


def _hf_kwargs(arch, hf, proc, processed, messages) -> dict:
    ids = {"image": hf.config.image_token_id, "video": hf.config.video_token_id}
    seconds = None
    if arch == "qwen2_5_vl":  # Qwen2_5_VLProcessor: temporal_patch_size / sampled fps per video
        clips = [p.data for m in messages for p in m.content if isinstance(p, VideoInput)]
        seconds = [_second_per_grid(proc, data) for data in clips] or None
    return hf_model_inputs(processed, ids, seconds)


def _second_per_grid(proc, data: bytes) -> float:
    """From the clip's own stream facts and the documented Qwen2VL sampling formula (not our sampler)."""
    import math

    total, src_fps = _probe(data)
    tp = proc.video_config.temporal_patch_size
    n = math.floor(min(max(total / src_fps * 2.0, 4), math.floor(min(768, total) / tp) * tp, total) / tp) * tp
    return tp / (n / total * src_fps)


def _probe(data: bytes) -> tuple[int, float]:
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        return sum(1 for p in c.demux(s) if p.size), float(s.average_rate)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_video_logits_match_transformers(name, family):
    arch, hf, ours, proc = family
    messages = PROMPTS[name]()
    processed = proc.process(messages)
    assert any(it.kind == "video" for it in processed.visuals)
    with torch.no_grad():
        ref = hf(**_hf_kwargs(arch, hf, proc, processed, messages)).logits[0]  # [T, V]
        ids = torch.tensor(processed.input_ids)
        ctx = DenseKVContext.for_model(ours, ids.shape[0])
        hidden = ours.forward(ids, processed.positions, ctx, our_embeds(ours, processed))
        got = ours.compute_logits(hidden)
    torch.testing.assert_close(got, ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["video_alone", "video_and_image", "two_videos", "text_then_video"])
def test_video_greedy_tokens_match_transformers(name, family):
    arch, hf, ours, proc = family
    messages = PROMPTS[name]()
    processed = proc.process(messages)
    with torch.no_grad():
        kw = _hf_kwargs(arch, hf, proc, processed, messages)
        ref = hf.generate(**kw, max_new_tokens=32, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(processed.input_ids):].tolist()
    engine = LLMEngine(ours, proc.tokenizer, EngineConfig(num_blocks=256, max_batched_tokens=48, cuda_graphs=False))
    engine.add("r", processed, SamplingParams(max_tokens=32, ignore_eos=True))
    tokens = []
    while engine.has_work():
        tokens += [t for out in engine.step() if hasattr(out, "token_ids") for t in out.token_ids]
    assert len(ref) == 32
    assert tokens == ref


def test_qwen3_prompt_has_a_timestamp_per_frame_group(family):
    arch, _, _, proc = family
    processed = proc.process(PROMPTS["video_alone"]())
    video = processed.visuals[0]
    text = proc.tokenizer.decode(processed.input_ids)
    if arch.startswith("qwen3_vl"):
        assert len(video.runs) == video.grid_thw[0] > 1
        assert text.count(" seconds>") == video.grid_thw[0]
        # frames 0 and 6 of 30 at 10 fps make the first group: (0.0 + 0.6) / 2; the template's outer wrapper stays
        assert "<|vision_start|><0.3 seconds><|vision_start|><|video_pad|>" in text
        assert "<|vision_end|><|vision_end|><|im_end|>" in text
    else:
        assert video.runs == () and " seconds>" not in text
