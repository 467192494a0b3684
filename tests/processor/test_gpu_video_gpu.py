"""The GPU video path (gpu_video.py, what `--preprocess-device auto|cuda` runs for videos on a CUDA model) against
transformers' own Qwen2.5-VL / Qwen3-VL processors run with device="cuda" (their video processors then resize the
uint8 frames in float32 on the GPU, as ours do): the same input_ids and grid_thw, pixel_values_videos within one
uint8 level (the same ops on the same device: equal is expected), in float32 and in the tower's bf16.

Run on the H200 host: PYTHONPATH=$PWD python -m pytest -q -m gpu tests/processor/test_gpu_video_gpu.py
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
torchvision = pytest.importorskip("torchvision")

from test_video_processor_gpu import CLIPS, _hf_processor, _stream_facts  # noqa: E402

from vlm_service.bench.clips import make_clip  # noqa: E402
from vlm_service.processor.processor import Processor, to_hf_conversation  # noqa: E402
from vlm_service.types import ChatMessage, VideoInput  # noqa: E402


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def _transformers_on_cuda(model_dir, messages, data):
    hf, _ = _hf_processor(model_dir)
    frames, total, fps = _stream_facts(data)
    text = hf.tokenizer.apply_chat_template(to_hf_conversation(messages), add_generation_prompt=True,
                                            tokenize=False)
    return hf(text=[text], videos=[frames], video_metadata=[{"total_num_frames": total, "fps": fps}],
              do_sample_frames=True, fps=2.0, cap_pixels_per_frame=False, return_tensors="pt", device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip_kw", CLIPS)
def test_gpu_video_path_matches_transformers_on_cuda(clip_kw, dtype, model_dir):
    data = make_clip(**clip_kw)
    messages = (ChatMessage("user", ("Describe", VideoInput(data=data), "briefly.")),)
    proc = Processor.from_pretrained(model_dir, video_preprocess_device=torch.device("cuda"), pixel_dtype=dtype)
    assert proc.gpu_video is not None
    ours = proc.process(messages)
    out = _transformers_on_cuda(model_dir, messages, data)
    video = ours.visuals[0]
    assert video.pixel_values.is_cuda and video.pixel_values.dtype == dtype
    assert ours.input_ids == out["input_ids"][0].tolist()
    assert list(video.grid_thw) == out["video_grid_thw"][0].tolist()
    ref = out["pixel_values_videos"].to("cuda", torch.float32).to(dtype).float()
    cfg = proc.video_config
    step = min(cfg.rescale_factor / s for s in cfg.image_std)
    diff = (video.pixel_values.float() - ref).abs()
    assert diff.max().item() <= step * 1.01, f"max |diff| {diff.max().item():.5f} (one level: {step:.5f})"
