"""Decode workers started before the demux (video_workers.py): the guess of their number from the container's
index, the same frames with and without them, and no thread left waiting whatever happens."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

av = pytest.importorskip("av")

from vlm_service.bench.clips import decode_all, make_clip  # noqa: E402
from vlm_service.errors import InvalidInput  # noqa: E402
from vlm_service.processor import video as video_mod  # noqa: E402
from vlm_service.processor import video_workers  # noqa: E402
from vlm_service.processor.video import VideoLimits, decode_video  # noqa: E402
from vlm_service.processor.video_workers import DecodeWorkers, expected_segments  # noqa: E402

FIELD = "messages[0].content[0].video"


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "video-decode"]


def _keyframes(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size and p.is_keyframe)


def test_expected_segments_counts_the_index_keyframes_of_an_mp4_and_nothing_of_a_webm():
    mp4 = make_clip(seconds=4.0, width=64, height=48, fps=10.0, gop=10)
    webm = make_clip(seconds=2.0, width=64, height=48, fps=10.0, fmt="webm", gop=5)
    with av.open(io.BytesIO(mp4)) as c:
        assert expected_segments(c.streams.video[0], 80) == _keyframes(mp4) >= 4
        assert expected_segments(c.streams.video[0], 1) == 1
    with av.open(io.BytesIO(webm)) as c:
        assert expected_segments(c.streams.video[0], 80) <= 1  # no index before the demux: no early workers


@pytest.mark.parametrize("kw", [dict(seconds=4.0, width=97, height=61, fps=10.0, gop=10),
                                dict(width=64, height=90, gop=4, vfr_ms=[0, 40, 100, 250, 260, 600, 1000, 1500])])
def test_early_workers_give_the_frames_of_the_late_ones(kw, monkeypatch):
    data = make_clip(**kw)
    started = []
    real = video_workers.DecodeWorkers.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        started.append(len(self))

    monkeypatch.setattr(video_workers.DecodeWorkers, "__init__", spy)
    early = decode_video(data, "", VideoLimits(), lambda total, *_: list(range(0, total, 2)), FIELD, workers=3)
    monkeypatch.setattr(video_mod, "PREOPEN_WORKERS", False)
    late = decode_video(data, "", VideoLimits(), lambda total, *_: list(range(0, total, 2)), FIELD, workers=3)
    assert started[0] == min(3, _keyframes(data)) >= 2  # early: before the demux, one per keyframe up to 3
    assert len(started) == 2  # late: made empty after the demux, then grown
    np.testing.assert_array_equal(early.frames, late.frames)
    ref = decode_all(data)
    for k, i in enumerate(range(0, len(ref), 2)):
        np.testing.assert_array_equal(early.frames[k], ref[i])
    assert not _decode_threads()


def test_early_workers_stop_when_the_sampler_refuses_the_video():
    data = make_clip(seconds=4.0, width=64, height=48, fps=10.0, gop=10)

    def refuse(*_):
        assert len(_decode_threads()) >= 2  # they were started before the demux
        raise InvalidInput("too many visual tokens", field=FIELD)

    with pytest.raises(InvalidInput, match="visual tokens") as err:
        decode_video(data, "", VideoLimits(), refuse, FIELD)
    assert err.value.field == FIELD and not _decode_threads()


def test_more_workers_than_segments_and_a_worker_that_could_not_open():
    data = make_clip(seconds=2.0, width=64, height=48, fps=10.0, gop=5)
    pool, ran = DecodeWorkers(data, 0, 5), []
    pool.run(lambda container, error: ran.append(container is not None and error is None))
    assert ran == [True] * 5 and not _decode_threads()

    bad = DecodeWorkers(b"not a video at all", 0, 2)
    bad.close()  # no job: the open error is not anyone's concern
    bad = DecodeWorkers(b"not a video at all", 0, 2)
    with pytest.raises(av.FFmpegError):
        bad.run(lambda container, error: (_ for _ in ()).throw(error))
    assert not _decode_threads()


@pytest.mark.parametrize("during", [True, False])
def test_the_content_hash_made_during_the_decode_is_the_video_hash(during, monkeypatch):
    from vlm_service.processor import visual_items
    from vlm_service.processor.video_config import VideoConfig
    from vlm_service.types import VideoInput

    monkeypatch.setattr(visual_items, "HASH_DURING_DECODE", during)
    cfg, data = VideoConfig(family="qwen3_vl"), make_clip(seconds=2.0, width=64, height=48, fps=10.0, gop=5)
    part = VideoInput(data=data)
    item = visual_items.prepare_video(part, cfg, VideoLimits(), FIELD)
    fps, max_frames = visual_items.sampling_of(part, cfg, VideoLimits())
    assert item.content_hash == visual_items.video_hash(part, fps, max_frames)
    assert item.content_hash != visual_items.video_hash(VideoInput(data=data[:-1]), fps, max_frames)
