"""Item 13: an animated GIF (or WebP) is refused with INVALID_ARGUMENT naming the image field, rather than served
as its first frame without a word; a one-frame GIF is an ordinary image."""

from __future__ import annotations

import io

import grpc
import pytest
from grpc_status import rpc_status
from PIL import Image

from vlm_service import errors
from vlm_service._proto.vlm.v1 import vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.processor.image import decode_image
from vlm_service.server.convert import field_violations


def gif(frames: int) -> bytes:
    images = [Image.new("RGB", (64, 64), (40 * i % 256, 90, 200)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=frames > 1, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def test_decode_refuses_an_animation_naming_the_field():
    with pytest.raises(errors.InvalidImage) as err:
        decode_image(gif(3), "image/gif", 10**7, "messages[0].content[0].image")
    assert err.value.field == "messages[0].content[0].image" and "3 frames" in str(err.value)
    assert decode_image(gif(1), "image/gif", 10**7, "f").size == (64, 64)


def test_server_refuses_an_animated_gif(served):
    with grpc.secure_channel(served.target, served.credentials()) as channel:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(build_request("what moves?", [(gif(4), "image/gif")], max_tokens=2), timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(rpc_status.from_call(err.value)) == ["messages[0].content[0].image"]
        assert "animated" in err.value.details()
        ok = list(stub.Generate(build_request("what is it?", [(gif(1), "image/gif")], max_tokens=2), timeout=60))
        assert ok[-1].complete.usage.image_tokens > 0
