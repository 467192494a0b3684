"""Video decode and sampling on CPU: sampled indices against transformers' rule, the seeking decoder against a
plain decode, the frames route against the file route, and every bad input refused naming the field."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from vlm_service.bench.clips import decode_all, make_audio_only, make_clip  # noqa: E402
from vlm_service.errors import InvalidInput, TooLarge  # noqa: E402
from vlm_service.processor import video as video_mod  # noqa: E402
from vlm_service.processor.video import VideoLimits, decode_video  # noqa: E402
from vlm_service.processor.video_config import VideoConfig, group_timestamps, resize_size, sample_indices  # noqa: E402
from vlm_service.processor.visual_items import prepare_video, video_tokens  # noqa: E402
from vlm_service.types import ImageInput, VideoInput  # noqa: E402

FIELD = "messages[0].content[1].video"
CASES = [(30, 10.0, 2.0, 768), (300, 30.0, 2.0, 768), (7, 25.0, 2.0, 768), (1000, 29.97, 0.5, 16),
         (240, 24.0, 4.0, 10), (3, 30.0, 2.0, 768), (121, 60.0, 1.0, 768)]


@pytest.mark.parametrize("total,src_fps,fps,max_frames", CASES)
def test_qwen3_indices_match_transformers_sample_frames(total, src_fps, fps, max_frames):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    hf = Qwen3VLVideoProcessor(max_frames=max_frames)
    ref = hf.sample_frames(VideoMetadata(total_num_frames=total, fps=src_fps), fps=fps).tolist()
    assert sample_indices(VideoConfig(family="qwen3_vl", max_frames=max_frames), total, src_fps, fps, 768) == ref


@pytest.mark.parametrize("total,src_fps,fps,max_frames", CASES)
def test_qwen2_5_indices_follow_the_documented_formula(total, src_fps, fps, max_frames):
    """Qwen2VLVideoProcessor.sample_frames (its module needs torchvision): n floored to a multiple of tp within
    [min_frames, max_frames, total], then arange(0, total, total / n).int()."""
    tp = 2
    cap = math.floor(min(max_frames, total) / tp) * tp
    n = math.floor(min(max(total / src_fps * fps, 4), cap, total) / tp) * tp
    ref = torch.arange(0, total, total / n).int().tolist()
    got = sample_indices(VideoConfig(family="qwen2_5_vl", max_frames=max_frames), total, src_fps, fps, 768)
    assert got == ref and len(got) % tp == 0


def test_group_timestamps_match_transformers():
    from transformers import Qwen3VLProcessor

    for indices, fps in (([0, 6, 12, 17, 23, 29], 10.0), ([0, 5, 9], 2.5), ([3, 4, 8, 9, 20], 29.97)):
        ref = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
        assert group_timestamps(indices, fps, 2) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("t,h,w", [(20, 720, 1280), (6, 61, 97), (4, 20, 3000), (300, 1080, 1920), (2, 8, 8)])
def test_qwen3_clip_resize_matches_transformers(t, h, w):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    cfg = VideoConfig(family="qwen3_vl")
    assert resize_size(cfg, t, h, w) == smart_resize(t, h, w, 2, 32, cfg.min_pixels, cfg.max_pixels)


def _sampler(cfg, fps=2.0, max_frames=768, seen=None):
    def sampler(total, src_fps, *_size):
        idx = sample_indices(cfg, total, src_fps, fps, max_frames)
        if seen is not None:
            seen.extend(idx)
        return idx
    return sampler


@pytest.mark.parametrize("kw", [dict(seconds=3.0, width=97, height=61, fps=10.0),
                                dict(seconds=2.0, width=80, height=48, fps=12.0, fmt="webm"),
                                dict(width=64, height=90, gop=4, vfr_ms=[0, 40, 100, 250, 260, 600, 1000, 1033,
                                                                         1500, 2000, 2100, 2400, 2900])])
@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_seeking_decoder_returns_the_frames_of_a_plain_decode(kw, family):
    data = make_clip(**kw)
    seen: list[int] = []
    got = decode_video(data, "", VideoLimits(), _sampler(VideoConfig(family=family), seen=seen), FIELD)
    ref = decode_all(data)
    assert len(seen) >= 4 and got.frames.shape[0] == len(seen)
    for k, i in enumerate(seen):
        np.testing.assert_array_equal(got.frames[k], ref[i])


def test_long_clip_decodes_only_around_the_sampled_frames(monkeypatch):
    data = make_clip(seconds=30.0, width=32, height=32, fps=10.0, gop=10, seed=-1)  # 300 frames, GOPs of 10
    from vlm_service.processor import video_frames

    decoded = []  # packets handed to the decoder
    real = video_frames._packets_from

    def counting(*args):
        for packet in real(*args):
            decoded.append(packet.pts)
            yield packet

    monkeypatch.setattr(video_frames, "_packets_from", counting)
    out = decode_video(data, "video/mp4", VideoLimits(), _sampler(VideoConfig(), fps=0.2, max_frames=8), FIELD)
    assert out.frames.shape[0] == 6
    assert len(decoded) <= 6 * 10 + 6  # at most one GOP per sampled frame, far from the 300 of a full decode


def test_frames_route_equals_file_route(model_dir):
    """The same frames sent pre-extracted (PNG, with their timestamps) give the same pixels and timestamps."""
    cfg = VideoConfig.from_pretrained(model_dir)
    data = make_clip(seconds=3.0, width=97, height=61, fps=10.0)
    from_file = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD)
    seen: list[int] = []
    decode_video(data, "", VideoLimits(), _sampler(cfg, seen=seen), FIELD)
    ref = decode_all(data)
    pngs = []
    for i in seen:
        buf = io.BytesIO()
        Image.fromarray(ref[i]).save(buf, format="PNG")
        pngs.append(ImageInput(buf.getvalue()))
    frames = VideoInput(frames=tuple(pngs), timestamps=tuple(i / 10.0 for i in seen))
    from_frames = prepare_video(frames, cfg, VideoLimits(), FIELD)
    assert from_frames.grid == from_file.grid
    torch.testing.assert_close(from_frames.pixel_values, from_file.pixel_values, atol=0, rtol=0)
    assert from_frames.timing.group_times == pytest.approx(from_file.timing.group_times)
    assert from_frames.content_hash != from_file.content_hash


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_visual_token_budget_is_checked_before_decoding(family, monkeypatch):
    cfg, data = VideoConfig(family=family, patch_size=14 if family == "qwen2_5_vl" else 16), \
        make_clip(seconds=3.0, width=97, height=61, fps=10.0)
    item = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD)
    n = item.num_tokens(cfg.merge_size)
    assert video_tokens(cfg, 6, 62, 98) == n  # the header-based count is the grid's
    assert prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, max_tokens=n).grid == item.grid
    monkeypatch.setattr(video_mod, "_decode_at", lambda *a: pytest.fail("decoded frames over the budget"))
    with pytest.raises(InvalidInput, match="visual tokens") as err:
        prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD, max_tokens=n - 1)
    assert err.value.field == FIELD


def test_cache_key_depends_on_sampling():
    cfg, data = VideoConfig(), make_clip(seconds=3.0, width=64, height=48, fps=10.0)
    a = prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD)
    b = prepare_video(VideoInput(data=data, fps=1.0), cfg, VideoLimits(), FIELD)
    assert a.content_hash != b.content_hash and a.grid != b.grid
    assert prepare_video(VideoInput(data=data), cfg, VideoLimits(), FIELD).content_hash == a.content_hash


def _refused(data, mime="", limits=VideoLimits(), exc=InvalidInput) -> str:
    with pytest.raises(exc) as err:
        decode_video(data, mime, limits, _sampler(VideoConfig()), FIELD)
    assert err.value.field == FIELD
    return str(err.value)


def test_bad_videos_are_refused_naming_the_field():
    clip = make_clip(seconds=2.0, width=64, height=48, fps=10.0)
    assert "empty" in _refused(b"")
    assert "truncated" in _refused(make_clip(2.0, 64, 48, 10.0, faststart=True)[:1500])
    assert "corrupt" in _refused(clip[: len(clip) // 2])  # the index (moov) at the end is lost
    assert "corrupt" in _refused(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    assert "only audio" in _refused(make_audio_only())
    png = io.BytesIO()
    Image.new("RGB", (32, 32)).save(png, format="PNG")
    assert "image" in _refused(png.getvalue())
    text = _refused(b"just some text that is not a video at all" * 10)
    assert "not an MP4" in text or "unsupported video" in text
    assert "mime" in _refused(clip, "video/webm")
    assert "unsupported video mime" in _refused(clip, "video/avi")
    long = make_clip(width=64, height=48, vfr_ms=[0, 18_000_000, 36_000_000])  # 3 frames over 10 hours
    assert "36000 s" in _refused(long)
    assert "too long" in _refused(clip, limits=VideoLimits(decode_timeout_s=0.0))
    assert "over the limit" in _refused(clip, limits=VideoLimits(max_bytes=100), exc=TooLarge)
    assert "pixels" in _refused(clip, limits=VideoLimits(max_frame_pixels=64 * 47))


def test_8k_frames_are_refused_from_the_header():
    big = make_clip(0.2, 7680, 4320, 5.0, codec="mjpeg", seed=-1)
    assert "7680x4320" in _refused(big)


def test_too_few_frames_and_bad_frames_input():
    cfg = VideoConfig()
    one = make_clip(seconds=0.1, width=64, height=48, fps=10.0)  # a single frame
    with pytest.raises(InvalidInput, match="at least 2"):
        prepare_video(VideoInput(data=one), cfg, VideoLimits(), FIELD)
    with pytest.raises(InvalidInput) as err:
        prepare_video(VideoInput(frames=(ImageInput(b"junk"),) * 3, frames_fps=2.0), cfg, VideoLimits(), FIELD)
    assert err.value.field == FIELD + ".frames[0]"
    with pytest.raises(InvalidInput, match="timestamps or a source fps"):
        prepare_video(VideoInput(frames=(ImageInput(b"x"),)), cfg, VideoLimits(), FIELD)


def test_processor_limits_videos_and_visual_tokens(model_dir):
    from vlm_service.processor.processor import Processor
    from vlm_service.types import ChatMessage

    clip = make_clip(seconds=2.0, width=64, height=48, fps=10.0)
    two = (ChatMessage("user", (VideoInput(data=clip), "and", VideoInput(data=clip))),)
    with pytest.raises(InvalidInput, match="2 videos") as err:
        Processor.from_pretrained(model_dir, max_videos=1).process(two)
    assert err.value.field == "messages"
    out = Processor.from_pretrained(model_dir).process(two)
    assert [it.kind for it in out.visuals] == ["video", "video"] and out.visuals[0].content_hash == \
        out.visuals[1].content_hash
    one_video = out.visuals[0].num_tokens
    with pytest.raises(InvalidInput, match="visual tokens") as err:  # the second video is over what is left
        Processor.from_pretrained(model_dir, max_visual_tokens=one_video + 1).process(two)
    assert err.value.field == "messages[0].content[2].video"


def _reference_pixels(frames: np.ndarray, cfg: VideoConfig) -> torch.Tensor:
    """transformers' steps in plain torch: uint8 resize, fused rescale/normalize in float32, Qwen's patchify."""
    from vlm_service.processor.video_preprocess import resize_frames

    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    h, w = resize_size(cfg, video.shape[0], video.shape[2], video.shape[3])
    x = resize_frames(video, h, w).to(torch.float32)
    mean = torch.tensor(cfg.image_mean) * (1.0 / cfg.rescale_factor)
    std = torch.tensor(cfg.image_std) * (1.0 / cfg.rescale_factor)
    x = x.sub_(mean[:, None, None]).div_(std[:, None, None])[None]  # [1, n, C, h, w]
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -x.shape[1] % tp:
        x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
    gt, gh, gw = x.shape[1] // tp, h // p, w // p
    x = x.view(1, gt, tp, 3, gh // m, m, p, gw // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(gt * gh * gw, 3 * tp * p * p)


@pytest.mark.parametrize("family,n", [("qwen3_vl", 5), ("qwen2_5_vl", 6), ("qwen3_vl", 2)])
def test_preprocess_video_matches_the_reference_steps(family, n):
    from vlm_service.processor.video_preprocess import preprocess_video

    cfg = VideoConfig(family=family, patch_size=14 if family == "qwen2_5_vl" else 16, max_pixels=200_000)
    frames = np.stack([np.asarray(Image.fromarray(decode_all(make_clip(1.0, 97, 61, 10.0))[k])) for k in range(n)])
    got, grid = preprocess_video(frames, cfg)
    ref = _reference_pixels(frames, cfg)
    assert got.shape == ref.shape and grid[0] == -(-n // 2)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    half, _ = preprocess_video(frames, cfg, torch.bfloat16)
    assert torch.equal(half, ref.to(torch.bfloat16))
