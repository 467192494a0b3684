"""The segment decoder (video_frames.py): parallel keyframe segments give exactly the frames of the sequential
decode and of a plain decode from the start (non-reference frames skipped or not), into any output buffer."""

from __future__ import annotations

import time

import numpy as np
import pytest

av = pytest.importorskip("av")

from vlm_service.bench.clips import decode_all, make_clip  # noqa: E402
from vlm_service.errors import InvalidInput  # noqa: E402
from vlm_service.processor.video import VideoLimits, decode_video  # noqa: E402
from vlm_service.processor.video_config import VideoConfig, sample_indices  # noqa: E402
from vlm_service.processor.video_frames import (  # noqa: E402
    THREADS_SCALE_ENV, CodecThreads, default_threads, plan_segments, slot_store)

FIELD = "messages[0].content[0].video"
VFR = [0, 40, 100, 250, 260, 600, 1000, 1033, 1500, 2000, 2100, 2400, 2900, 3000, 3300, 3310, 3800, 4200, 4700]
CLIPS = [dict(seconds=4.0, width=97, height=61, fps=10.0, gop=10),  # H.264 with B-frames, 4 GOPs
         dict(width=64, height=90, gop=4, vfr_ms=VFR),  # variable frame rate, a keyframe every 4 frames
         dict(seconds=3.0, width=80, height=48, fps=12.0, fmt="webm", gop=10),  # VP9: nothing skipped
         dict(seconds=2.0, width=66, height=40, fps=10.0, codec="mjpeg")]  # every frame a keyframe


def _sampler(cfg: VideoConfig, fps: float, seen: list[int]):
    def sampler(total, src_fps, *_size):
        seen[:] = sample_indices(cfg, total, src_fps, fps, 768)
        return list(seen)
    return sampler


@pytest.mark.parametrize("kw", CLIPS)
@pytest.mark.parametrize("family,fps", [("qwen3_vl", 2.0), ("qwen2_5_vl", 2.0), ("qwen3_vl", 8.0)])
def test_parallel_segments_equal_the_sequential_and_the_plain_decode(kw, family, fps):
    """fps 8 on these clips keeps most frames: sampled B-frames (non-reference ones too) must be decoded."""
    data, cfg, seen = make_clip(**kw), VideoConfig(family=family), []
    one = decode_video(data, "", VideoLimits(), _sampler(cfg, fps, seen), FIELD, workers=1)
    many = decode_video(data, "", VideoLimits(), _sampler(cfg, fps, seen), FIELD, workers=4)
    ref = decode_all(data)
    assert len(seen) >= 4 and one.frames.shape == many.frames.shape == (len(seen), *ref[0].shape)
    np.testing.assert_array_equal(many.frames, one.frames)
    for k, i in enumerate(seen):
        np.testing.assert_array_equal(one.frames[k], ref[i])
    assert many.frame_times == one.frame_times and many.sampled_fps == one.sampled_fps


def test_frames_go_into_the_given_buffer_and_duplicates_fill_every_slot():
    data = make_clip(seconds=2.0, width=64, height=48, fps=10.0, gop=5)
    buffers = []

    def buffer(n, h, w):
        buffers.append(np.full((n, h, w, 3), 7, dtype=np.uint8))
        return buffers[-1]

    out = decode_video(data, "", VideoLimits(), lambda *a: [0, 3, 3, 12, 19, 19], FIELD, frames_buffer=buffer)
    ref = decode_all(data)
    assert out.frames is buffers[0]
    for k, i in enumerate([0, 3, 3, 12, 19, 19]):
        np.testing.assert_array_equal(out.frames[k], ref[i])


def test_plan_segments_groups_targets_by_their_keyframe():
    assert plan_segments([5, 0, 12, 12, 30, 31], [0, 10, 20, 30]) == [(0, [0, 5]), (10, [12]), (30, [30, 31])]
    assert plan_segments([3], [10]) == [(10, [3])]  # before the first keyframe: from it (the seek lands there)
    out = np.zeros((3, 1, 1, 3), dtype=np.uint8)
    slot_store([4, 9, 4], out)(4, np.ones((1, 1, 3), dtype=np.uint8))
    assert out[:, 0, 0, 0].tolist() == [1, 0, 1]


def test_a_decode_worker_past_the_deadline_is_refused_naming_the_field():
    """The deadline passes between the sampling and the decode: the worker threads' check raises, and the
    InvalidInput reaches the caller."""
    data = make_clip(seconds=4.0, width=64, height=48, fps=10.0, gop=10)

    def slow_sampler(total, *_):
        time.sleep(0.3)
        return list(range(0, total, 5))

    with pytest.raises(InvalidInput, match="too long") as err:
        decode_video(data, "", VideoLimits(decode_timeout_s=0.2), slow_sampler, FIELD, workers=4)
    assert err.value.field == FIELD


def test_a_failing_worker_stops_the_others():
    """An error in one segment thread empties the queue: the rest stop after their current segment, and the
    error reaches the caller (decode_video turns it into InvalidInput naming the field)."""
    import av as _av
    import io

    from vlm_service.processor.video_frames import decode_segments

    data = make_clip(seconds=3.0, width=64, height=48, fps=10.0, codec="mjpeg")  # 30 keyframes: 30 segments
    calls = []

    def convert(frame, threads):
        calls.append(frame.pts)
        raise ValueError("boom")

    with _av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        stamps = sorted(p.pts for p in c.demux(stream) if p.pts is not None and p.size)
        segments = plan_segments(stamps, stamps)
        assert len(segments) == 30
        with pytest.raises(ValueError, match="boom"):
            decode_segments(data, c, stream, segments, lambda *a: None, convert, time.monotonic() + 60, FIELD,
                            workers=2)
    assert 1 <= len(calls) <= 10
    with pytest.raises(InvalidInput, match="corrupt or unsupported") as err:
        decode_video(data, "", VideoLimits(), lambda total, *_: list(range(total)), FIELD,
                     frames_buffer=lambda n, h, w: np.empty((n, h + 1, w, 3), np.uint8), workers=2)  # wrong shape
    assert err.value.field == FIELD


ALLOCATIONS = [CodecThreads(), CodecThreads(scale=0.3), CodecThreads(scale=2.0, thread_type="FRAME"),
               CodecThreads(thread_type="SLICE"), CodecThreads(scale=3.0, longest=8)]


@pytest.mark.parametrize("kw", CLIPS[:2])
@pytest.mark.parametrize("threads", ALLOCATIONS, ids=repr)
def test_every_codec_thread_allocation_gives_the_plain_decode_frames(kw, threads):
    """Frame threads change how many frames are in flight (and so which packets are sent past a segment's last
    target): the kept frames must not change with them."""
    data, cfg, seen = make_clip(**kw), VideoConfig(family="qwen3_vl"), []
    got = decode_video(data, "", VideoLimits(), _sampler(cfg, 4.0, seen), FIELD, workers=3, threads=threads)
    ref = decode_all(data)
    assert len(seen) >= 4
    for k, i in enumerate(seen):
        np.testing.assert_array_equal(got.frames[k], ref[i])


def test_codec_thread_counts_follow_the_share_the_scale_and_the_longest():
    plain, over, longest = CodecThreads(scale=1.0), CodecThreads(scale=2.0), CodecThreads(scale=1.0, longest=16)
    assert plain.count(60, 300, 16, True) == 3 and plain.count(1, 300, 16, False) == 1  # at least one
    assert over.count(60, 300, 16, False) == 6
    assert longest.count(60, 300, 16, True) == 16 and longest.count(60, 300, 16, False) == 3


def test_the_scale_knob_is_read_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv(THREADS_SCALE_ENV, "2.5")
    assert default_threads() == CodecThreads(scale=2.5) != CodecThreads()
    monkeypatch.setenv(THREADS_SCALE_ENV, "lots")
    assert default_threads() == CodecThreads()
    assert THREADS_SCALE_ENV in caplog.text
    monkeypatch.delenv(THREADS_SCALE_ENV)
    assert default_threads() == CodecThreads()


@pytest.mark.parametrize("kw", CLIPS)
def test_draining_after_the_last_target_gives_the_frames_of_decoding_on(kw, monkeypatch):
    from vlm_service.processor import video_frames

    data, cfg, seen = make_clip(**kw), VideoConfig(family="qwen3_vl"), []
    drained = decode_video(data, "", VideoLimits(), _sampler(cfg, 2.0, seen), FIELD, workers=2)
    monkeypatch.setattr(video_frames, "DRAIN_AFTER_TARGETS", False)
    kept_on = decode_video(data, "", VideoLimits(), _sampler(cfg, 2.0, seen), FIELD, workers=2)
    np.testing.assert_array_equal(drained.frames, kept_on.frames)
