"""The GPU video path (gpu_video.py) run on CPU tensors, against the CPU path (video_preprocess.py).

The one intended difference is the resize: the CPU path (like transformers on the CPU) uses torch's uint8 bicubic
kernel, which rounds and clamps to uint8 between its horizontal and vertical passes; the GPU path (like
transformers on CUDA: torchvision casts to float off the CPU) resizes in float32 and rounds once. Measured on these
clips (moving gradients with hard 255 -> 0 wrap edges, up- and downscaled): 15-22 % of the levels differ by one,
at most 1.4e-4 of them by more, the largest 13 (the uint8 kernel clipping the first pass's overshoot at a hard
edge). The bounds below: mean |diff| <= 0.3 levels, a share of <= 1e-3 beyond one level, max <= 32 levels; and
run in two passes with the uint8 kernel's rounding in between, the float filter is within 2 levels (the same
weights and pixel centres). Everything after the resize (normalise, temporal padding, patch layout, dtype) is
bit-identical given the same levels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

av = pytest.importorskip("av")

from vlm_service.bench.clips import make_clip  # noqa: E402
from vlm_service.errors import InvalidInput  # noqa: E402
from vlm_service.processor.gpu_preprocess import resolve_video_preprocess_device  # noqa: E402
from vlm_service.processor.gpu_video import (GpuVideoPreprocessor, preprocess_video_frames, resize_levels,  # noqa: E402
                                             video_value_table)
from vlm_service.processor.video import VideoLimits  # noqa: E402
from vlm_service.processor.video_config import VideoConfig, resize_size  # noqa: E402
from vlm_service.processor.video_preprocess import preprocess_video, resize_frames  # noqa: E402
from vlm_service.processor.visual_items import prepare_video  # noqa: E402
from vlm_service.types import ChatMessage, VideoInput  # noqa: E402

FIELD = "messages[0].content[0].video"
MEAN_LEVELS, WIDE_SHARE, MAX_LEVELS = 0.3, 1e-3, 32  # the float vs uint8 resize bounds (module docstring)
CLIPS = [dict(seconds=3.0, width=97, height=61, fps=10.0), dict(seconds=2.0, width=80, height=48, fps=12.0,
                                                                fmt="webm"),
         dict(width=64, height=90, gop=4, vfr_ms=[0, 40, 100, 250, 260, 600, 1000, 1033, 1500, 2000, 2100])]
# both families; max_pixels small enough to downscale, min_pixels large enough to upscale the small clips
CONFIGS = [VideoConfig(family="qwen3_vl"), VideoConfig(family="qwen3_vl", min_pixels=4096, max_pixels=16384),
           VideoConfig(family="qwen2_5_vl", patch_size=14, min_pixels=112 * 112, max_pixels=160 * 140,
                       image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711))]


def _decode_unresized(data: bytes, cfg: VideoConfig) -> np.ndarray:
    from vlm_service.processor.visual_items import _decode, sampling_of

    fps, max_frames = sampling_of(VideoInput(data=data), cfg, VideoLimits())
    gpu = GpuVideoPreprocessor(cfg, "cpu", torch.float32)
    return _decode(VideoInput(data=data), cfg, VideoLimits(), FIELD, fps, max_frames, 0, gpu).frames


def _assert_values_bound(got: torch.Tensor, want: torch.Tensor, cfg: VideoConfig) -> None:
    """Normalised values within the resize bound, in levels (one level moves a value by rescale / std, at most;
    the 1.01 allows for bf16's rounding of the values)."""
    step = min(cfg.rescale_factor / s for s in cfg.image_std)
    _assert_resize_bound((got.float() - want.float()).abs() / (step * 1.01))


@pytest.mark.parametrize("clip_kw", CLIPS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=["qwen3", "qwen3-down", "qwen2_5"])
def test_float_resize_is_within_one_level_of_the_uint8_kernel(clip_kw, cfg):
    frames = torch.from_numpy(_decode_unresized(make_clip(**clip_kw), cfg)).permute(0, 3, 1, 2)
    size = resize_size(cfg, frames.shape[0], frames.shape[2], frames.shape[3])
    assert size != tuple(frames.shape[-2:])  # the configs make every clip resize
    ours, ref = resize_levels(frames, size), resize_frames(frames.contiguous(), *size)
    assert ours.dtype == ref.dtype == torch.uint8 and ours.shape == ref.shape
    _assert_resize_bound((ours.float() - ref.float()).abs())
    # the same filter: with the uint8 kernel's rounding between the passes, within its fixed-point error
    x = frames.float().contiguous()
    for h, w in ((frames.shape[2], size[1]), size):
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 255).round()
    two_pass = (x - ref.float()).abs()
    assert two_pass.max().item() <= 2 and (two_pass > 0).float().mean().item() <= 0.03


def _assert_resize_bound(diff_levels: torch.Tensor) -> None:
    assert diff_levels.mean().item() <= MEAN_LEVELS
    assert (diff_levels > 1.5).float().mean().item() <= WIDE_SHARE and diff_levels.max().item() <= MAX_LEVELS


@pytest.mark.parametrize("clip_kw", CLIPS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=["qwen3", "qwen3-down", "qwen2_5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_path_on_cpu_matches_the_cpu_path(clip_kw, cfg, dtype):
    frames = _decode_unresized(make_clip(**clip_kw), cfg)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    got, grid = preprocess_video_frames(video, cfg, video_value_table(cfg, dtype, "cpu"))
    want, want_grid = preprocess_video(frames, cfg, dtype)
    assert grid == want_grid and got.shape == want.shape and got.dtype == dtype
    _assert_values_bound(got, want, cfg)
    # given the same levels, everything after the resize is the CPU path's, bit for bit
    size = resize_size(cfg, video.shape[0], video.shape[2], video.shape[3])
    levels = resize_levels(video, size).permute(0, 2, 3, 1).numpy()
    same, _ = preprocess_video(levels, cfg, dtype, resized=True)
    assert torch.equal(got.view(torch.int16) if dtype != torch.float32 else got,
                       same.view(torch.int16) if dtype != torch.float32 else same)


def test_unchanged_size_is_not_resampled():
    frames = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)
    assert resize_levels(frames, (64, 96)) is frames
    channels_last = frames.contiguous(memory_format=torch.channels_last)  # as uploaded from [n, H, W, 3]
    assert torch.equal(resize_levels(frames, (32, 64)), resize_levels(channels_last, (32, 64)))


@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=["qwen3", "qwen2_5"])
def test_prepare_video_on_the_gpu_path(cfg):
    """Decode without host resize into the preprocessor's buffer, then the device ops: the CPU path's grid,
    timing and cache key, pixels within one level."""
    data = make_clip(seconds=3.0, width=97, height=61, fps=10.0)
    gpu = GpuVideoPreprocessor(cfg, torch.device("cpu"), torch.float32)
    got = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, gpu=gpu)
    want = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD)
    assert got.grid == want.grid and got.content_hash == want.content_hash and got.kind == "video"
    assert got.timing == want.timing
    _assert_values_bound(got.pixel_values, want.pixel_values, cfg)


def test_gpu_path_refuses_unresizable_frames_before_decoding(monkeypatch):
    from vlm_service.processor import video as video_mod

    cfg = VideoConfig()
    data = make_clip(seconds=1.0, width=402, height=2, fps=10.0)  # aspect ratio 201: smart_resize refuses it
    monkeypatch.setattr(video_mod, "_decode_at", lambda *a: pytest.fail("decoded frames it cannot resize"))
    with pytest.raises(InvalidInput, match="cannot be resized") as err:
        prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, gpu=GpuVideoPreprocessor(cfg, "cpu",
                                                                                                  torch.float32))
    assert err.value.field == FIELD


def test_processor_sends_videos_to_the_video_device_and_images_to_the_host(model_dir):
    from vlm_service.processor.processor import Processor

    data = make_clip(seconds=2.0, width=97, height=61, fps=10.0)
    messages = (ChatMessage("user", ("Describe", VideoInput(data=data), "briefly.")),)
    dev = Processor.from_pretrained(model_dir, video_preprocess_device=torch.device("cpu"),
                                    pixel_dtype=torch.bfloat16)
    host = Processor.from_pretrained(model_dir, pixel_dtype=torch.bfloat16)
    assert dev.gpu_video is not None and dev.gpu_preprocessor is None and host.gpu_video is None
    got, want = dev.process(messages), host.process(messages)
    assert got.input_ids == want.input_ids and torch.equal(got.positions, want.positions)
    a, b = got.visuals[0], want.visuals[0]
    assert a.grid_thw == b.grid_thw and a.pixel_values.dtype == torch.bfloat16
    _assert_values_bound(a.pixel_values, b.pixel_values, dev.video_config)


def test_resolve_video_preprocess_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_video_preprocess_device("auto", cuda) == cuda  # videos follow transformers' GPU processor
    assert resolve_video_preprocess_device("auto", cpu) is None
    assert resolve_video_preprocess_device("cpu", cuda) is None
    assert resolve_video_preprocess_device("cuda", cuda) == cuda
    with pytest.raises(ValueError, match="needs the model on CUDA"):
        resolve_video_preprocess_device("cuda", cpu)
    with pytest.raises(ValueError, match="preprocess-device"):
        resolve_video_preprocess_device("gpu", cuda)


def test_a_failing_device_resize_falls_back_to_the_host_path(monkeypatch, caplog):
    from vlm_service.processor import gpu_video

    cfg = CONFIGS[0]
    frames = _decode_unresized(make_clip(seconds=2.0, width=66, height=40, fps=10.0), cfg)

    def boom(*a, **k):
        raise RuntimeError("too much shared memory")

    monkeypatch.setattr(gpu_video, "resize_levels", boom)
    got, grid = GpuVideoPreprocessor(cfg, "cpu", torch.bfloat16)(frames)
    want, want_grid = preprocess_video(frames, cfg, torch.bfloat16)
    assert grid == want_grid and torch.equal(got.view(torch.int16), want.view(torch.int16))  # the host path's
    assert "preprocessed on the host" in caplog.text


def test_warm_up_runs_the_device_ops_and_logs_the_difference(caplog):
    """What a CUDA preprocessor does at start-up (here on the CPU): a smooth clip within about one level."""
    import logging
    import re

    caplog.set_level(logging.INFO, logger="vlm_service.processor.gpu_video")
    GpuVideoPreprocessor(CONFIGS[0], "cpu", torch.float32)._warm_up()
    diff = float(re.search(r"max \|diff\| vs the CPU path ([0-9.]+)", caplog.text).group(1))
    assert diff <= 2 * CONFIGS[0].rescale_factor / min(CONFIGS[0].image_std)
