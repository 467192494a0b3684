"""Video parts: proto -> VideoInput with its fields checked (no decode), size errors as RESOURCE_EXHAUSTED with the
field, and ModelInfo's video limits."""

from __future__ import annotations

import grpc
import pytest

from vlm_service import errors, types
from vlm_service._proto.vlm.v1 import vlm_pb2
from vlm_service.client import build_request
from vlm_service.config import LimitsConfig
from vlm_service.runtime import ModelInfo, VideoInfo
from vlm_service.server import convert


def test_video_part_keeps_its_order_and_sampling():
    req = build_request("what happens?", [b"png"], videos=[(b"mp4", "video/mp4", 1.5)])
    out = convert.request_from_proto(req, "r", 0.0)
    image, video, text = out.messages[0].content
    assert image == types.ImageInput(b"png", "") and text == "what happens?"
    assert video == types.VideoInput(data=b"mp4", mime_type="video/mp4", fps=1.5)
    assert convert.count_videos(req) == 1 and convert.count_images(req) == 1


def test_frames_with_timestamps_or_fps():
    frames = vlm_pb2.VideoFrames(frames=[vlm_pb2.Image(data=b"a"), vlm_pb2.Image(data=b"b")], timestamps=[0, 0.5])
    v = convert.video_from_proto(vlm_pb2.Video(frames=frames, max_frames=8), "f")
    assert v.frames == (types.ImageInput(b"a"), types.ImageInput(b"b")) and v.timestamps == (0.0, 0.5)
    assert v.max_frames == 8 and v.fps is None and not v.data


@pytest.mark.parametrize("video,field", [
    (vlm_pb2.Video(), "f"),
    (vlm_pb2.Video(data=b"x", fps=0.0), "f.fps"),
    (vlm_pb2.Video(data=b"x", fps=float("nan")), "f.fps"),
    (vlm_pb2.Video(data=b"x", max_frames=0), "f.max_frames"),
    (vlm_pb2.Video(frames=vlm_pb2.VideoFrames(frames=[vlm_pb2.Image(data=b"a")])), "f.frames"),
    (vlm_pb2.Video(frames=vlm_pb2.VideoFrames(frames=[vlm_pb2.Image(data=b"a")], timestamps=[0, 1])),
     "f.frames.timestamps"),
    (vlm_pb2.Video(data=b"x", frames=vlm_pb2.VideoFrames(frames=[vlm_pb2.Image(data=b"a")], fps=1)), "f"),
])
def test_bad_video_fields_name_the_field(video, field):
    with pytest.raises(errors.InvalidInput) as err:
        convert.video_from_proto(video, "f")
    assert err.value.field == field


def test_too_large_is_resource_exhausted_with_the_field():
    exc = errors.TooLarge("video is 9 bytes, over the limit of 1", field="messages[0].content[0].video")
    assert convert.status_code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert convert.field_violations(convert.error_status(exc)) == ["messages[0].content[0].video"]


def test_model_info_reports_video_limits():
    limits = LimitsConfig(max_video_bytes=123, max_video_frames=64, max_visual_tokens=9000)
    info = ModelInfo("m", "A", 100, 2, 1000, video=VideoInfo.from_limits(limits))
    proto = convert.model_info_to_proto(info)
    assert (proto.max_video_bytes, proto.max_video_frames, proto.max_visual_tokens) == (123, 64, 9000)
    assert list(proto.accepted_video_mime_types) == ["video/mp4", "video/webm", "video/quicktime"]
    assert proto.max_video_duration_s == limits.max_video_duration_s and proto.max_videos == 4
