"""Frames uploaded and resized while the video decodes (gpu_video.FramesJob, STREAM_FRAMES) give bit for bit what the
batch path (all frames after the decode) gives: per frame the resize is the stacked resize's slice. On the CPU here
(the same torch ops), and on CUDA (gpu-marked; run on the H200 host:
PYTHONPATH=$PWD python -m pytest -q -m gpu tests/processor/test_gpu_video_stream.py)."""

from __future__ import annotations

import pytest
import torch

av = pytest.importorskip("av")

from vlm_service.bench.clips import make_clip  # noqa: E402
from vlm_service.processor import gpu_video  # noqa: E402
from vlm_service.processor.gpu_video import GpuVideoPreprocessor  # noqa: E402
from vlm_service.processor.video import VideoLimits  # noqa: E402
from vlm_service.processor.video_config import VideoConfig  # noqa: E402
from vlm_service.processor.visual_items import prepare_video  # noqa: E402
from vlm_service.types import VideoInput  # noqa: E402

FIELD = "messages[0].content[0].video"
CLIPS = [dict(seconds=3.0, width=97, height=61, fps=10.0, gop=10),  # 3 keyframe segments, decoded in parallel
         dict(width=64, height=90, gop=4, vfr_ms=[0, 40, 100, 250, 260, 600, 1000, 1033, 1500, 2000, 2100])]
CONFIGS = [VideoConfig(family="qwen3_vl"), VideoConfig(family="qwen3_vl", min_pixels=4096, max_pixels=16384),
           VideoConfig(family="qwen2_5_vl", patch_size=14, min_pixels=112 * 112, max_pixels=160 * 140)]


def _both_paths(data: bytes, cfg: VideoConfig, device: str, dtype: torch.dtype, monkeypatch):
    gpu = GpuVideoPreprocessor(cfg, device, dtype)
    streamed = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, gpu=gpu)
    monkeypatch.setattr(gpu_video, "STREAM_FRAMES", False)
    batch = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, gpu=gpu)
    return streamed, batch


def _assert_same(streamed, batch):
    assert streamed.grid == batch.grid and streamed.pixel_values.dtype == batch.pixel_values.dtype
    assert torch.equal(streamed.pixel_values, batch.pixel_values)
    assert streamed.content_hash == batch.content_hash and streamed.timing == batch.timing


@pytest.mark.parametrize("cfg", CONFIGS, ids=["qwen3", "qwen3_small", "qwen2_5"])
@pytest.mark.parametrize("clip_kw", CLIPS)
def test_streamed_frames_equal_the_batch_path_on_the_cpu(clip_kw, cfg, monkeypatch):
    streamed, batch = _both_paths(make_clip(**clip_kw), cfg, "cpu", torch.float32, monkeypatch)
    _assert_same(streamed, batch)


def test_a_failing_frame_sends_the_video_through_the_batch_path(monkeypatch, caplog):
    """A device failure in one frame's resize (e.g. out of memory mid-decode): the finished video is the batch
    path's, from the host buffer that holds every frame, and the failure is logged."""
    cfg, data = CONFIGS[1], make_clip(**CLIPS[0])
    real, calls = gpu_video.resize_levels, []

    def fail_third(frames, size):
        calls.append(frames.shape[0])
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (test)")
        return real(frames, size)

    monkeypatch.setattr(gpu_video, "resize_levels", fail_third)
    gpu = GpuVideoPreprocessor(cfg, "cpu", torch.float32)
    streamed = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, gpu=gpu)
    assert calls[:3] == [1, 1, 1] and calls[-1] > 1  # per frame until the failure, then the whole stack
    monkeypatch.setattr(gpu_video, "resize_levels", real)
    monkeypatch.setattr(gpu_video, "STREAM_FRAMES", False)
    _assert_same(streamed, prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, gpu=gpu))
    assert "out of memory (test)" in caplog.text


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip_kw", CLIPS + [dict(seconds=4.0, width=1280, height=720, fps=30.0, gop=60)])
def test_streamed_frames_equal_the_batch_path_on_cuda(clip_kw, dtype, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    streamed, batch = _both_paths(make_clip(**clip_kw), CONFIGS[0], "cuda", dtype, monkeypatch)
    assert streamed.pixel_values.device.type == "cuda"
    _assert_same(streamed, batch)
