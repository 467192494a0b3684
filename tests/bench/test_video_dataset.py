"""The harness's video dataset: synthetic PyAV clips of the asked length/size/fps, or a folder; requests carry them."""

from __future__ import annotations

import io

import pytest

from vlm_service.bench.cli import _dataset_spec, build_parser
from vlm_service.bench.dataset import build_dataset
from vlm_service.bench.loadgen import LoadPlan, build_proto

av = pytest.importorskip("av")


def _spec(*flags):
    return _dataset_spec(build_parser().parse_args(list(flags)), 3)


def test_synthetic_clips_have_the_asked_shape_and_reach_the_request():
    reqs = build_dataset(_spec("--images-per-request", "0", "--videos-per-request", "1", "--video-seconds", "1.5",
                               "--video-resolution", "96x64", "--video-fps", "12", "--video-sample-fps", "4"))
    clip = reqs[0].videos[0]
    with av.open(io.BytesIO(clip.data)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height, s.frames) == (96, 64, 18)
        assert float(s.average_rate) == 12.0
    assert reqs[1].videos[0].data == clip.data  # one clip reused unless --unique-videos
    proto = build_proto(reqs[0], "r", LoadPlan())
    parts = proto.messages[0].content
    assert [p.WhichOneof("kind") for p in parts] == ["video", "text"]
    assert parts[0].video.mime_type == "video/mp4" and parts[0].video.fps == 4.0


def test_unique_videos_differ_and_folder_dataset_reads_files(tmp_path):
    reqs = build_dataset(_spec("--images-per-request", "0", "--videos-per-request", "1", "--video-seconds", "0.5",
                               "--video-resolution", "32x32", "--unique-videos"))
    assert len({r.videos[0].data for r in reqs}) == 3
    (tmp_path / "a.webm").write_bytes(b"webm bytes")
    (tmp_path / "b.mp4").write_bytes(b"mp4 bytes")
    (tmp_path / "notes.txt").write_text("not a video")
    reqs = build_dataset(_spec("--dataset", "video_folder", "--dataset-path", str(tmp_path)))
    assert [r.videos[0].mime_type for r in reqs] == ["video/webm", "video/mp4", "video/webm"]
