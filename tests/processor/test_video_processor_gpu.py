"""Video, processor half: our processor against transformers' own Qwen2.5-VL / Qwen3-VL processors (their video
processors run on torchvision, which the GPU host has): same input_ids (pads, timestamps), pixel_values_videos,
video_grid_thw and MRoPE positions for the same clip. transformers gets every decoded frame plus the stream's
metadata and samples itself (do_sample_frames, fps 2), so the sampling is checked too.

Run on the H200 host: PYTHONPATH=$PWD python -m pytest -q -m gpu tests/processor/test_video_processor_gpu.py
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu
torchvision = pytest.importorskip("torchvision")

from vlm_service.bench.clips import decode_all, make_clip  # noqa: E402
from vlm_service.processor.processor import Processor, to_hf_conversation  # noqa: E402
from vlm_service.types import ChatMessage, VideoInput  # noqa: E402

CLIPS = [dict(seconds=3.0, width=97, height=61, fps=10.0), dict(seconds=2.0, width=80, height=48, fps=12.0,
                                                                fmt="webm"),
         dict(seconds=10.0, width=1280, height=720, fps=30.0),
         dict(width=64, height=90, gop=4, vfr_ms=[0, 40, 100, 250, 260, 600, 1000, 1033, 1500, 2000, 2100])]


def _hf_processor(model_dir):
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    kw = {k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")}
    qwen3 = cfg["processor_class"] == "Qwen3VLProcessor"
    video_kw = {k: v for k, v in kw.items() if k in ("size", "patch_size", "temporal_patch_size", "merge_size",
                                                     "image_mean", "image_std", "min_pixels", "max_pixels")}
    if qwen3:
        video_kw.pop("min_pixels", None), video_kw.pop("max_pixels", None)
    video = (Qwen3VLVideoProcessor if qwen3 else Qwen2VLVideoProcessor)(**video_kw)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cls = Qwen3VLProcessor if qwen3 else Qwen2_5_VLProcessor
    return cls(image_processor=Qwen2VLImageProcessorPil(**kw), tokenizer=tok, video_processor=video,
               chat_template=tok.chat_template), qwen3


def _stream_facts(data: bytes) -> tuple[np.ndarray, int, float]:
    import av

    frames = np.stack(decode_all(data))
    with av.open(io.BytesIO(data)) as c:
        fps = float(c.streams.video[0].average_rate)
    return frames, frames.shape[0], fps


def _hf_positions(qwen3: bool, out, tokens_per_second: int):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    cls = Qwen3VLModel if qwen3 else Qwen2_5_VLModel
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(
        spatial_merge_size=2, tokens_per_second=tokens_per_second)),
        get_vision_position_ids=lambda *a, **k: cls.get_vision_position_ids(None, *a, **k))
    extra = {} if qwen3 else {"second_per_grid_ts": torch.tensor(out["second_per_grid_ts"])}
    pos, delta = cls.get_rope_index(fake, out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
                                    video_grid_thw=out["video_grid_thw"], **extra)
    return pos[:, 0], int(delta[0, 0])


@pytest.mark.parametrize("clip_kw", CLIPS)
def test_video_processing_matches_transformers(clip_kw, model_dir):
    data = make_clip(**clip_kw)
    ours_proc = Processor.from_pretrained(model_dir)
    messages = (ChatMessage("user", ("Describe", VideoInput(data=data), "briefly.")),)
    ours = ours_proc.process(messages)
    hf, qwen3 = _hf_processor(model_dir)
    frames, total, fps = _stream_facts(data)
    text = hf.tokenizer.apply_chat_template(to_hf_conversation(messages), add_generation_prompt=True,
                                            tokenize=False)
    out = hf(text=[text], videos=[frames], video_metadata=[{"total_num_frames": total, "fps": fps}],
             do_sample_frames=True, fps=2.0, cap_pixels_per_frame=False, return_tensors="pt")
    video = ours.images[0]
    assert ours.input_ids == out["input_ids"][0].tolist()
    assert list(video.grid_thw) == out["video_grid_thw"][0].tolist()
    torch.testing.assert_close(video.pixel_values, out["pixel_values_videos"], atol=1e-6, rtol=0)
    pos, delta = _hf_positions(qwen3, out, ours_proc.video_config.tokens_per_second)
    assert torch.equal(ours.positions, pos) and ours.mrope_delta == delta
