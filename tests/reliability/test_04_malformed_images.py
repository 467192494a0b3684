"""4. Malformed images (truncated, zero bytes, text as image, wrong mime, 1x1): INVALID_ARGUMENT naming the field;
the next valid request succeeds."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from reliability_helpers import collect, png, wait_idle
from vlm_service._proto.vlm.v1 import vlm_pb2
from vlm_service.server import convert

_GOOD = png(40, 30, seed=4)
CASES = {
    "truncated": (_GOOD[: len(_GOOD) // 2], "image/png"),
    "zero_bytes": (b"", "image/png"),
    "text_as_image": ("a cat on a mat".encode(), ""),
    "wrong_mime": (_GOOD, "image/jpeg"),
    "unsupported_mime": (_GOOD, "text/plain"),
    "one_by_one": (png(1, 1, seed=5), "image/png"),
    "truncated_jpeg": (png(40, 30, seed=6, fmt="JPEG")[:200], "image/jpeg"),
}


def _request(data: bytes, mime: str, second: bool) -> vlm_pb2.GenerateRequest:
    parts = [vlm_pb2.ContentPart(text="look")]
    if second:  # the bad image is the second one of the message: the field must say content[2]
        parts.append(vlm_pb2.ContentPart(image=vlm_pb2.Image(data=_GOOD, mime_type="image/png")))
    parts.append(vlm_pb2.ContentPart(image=vlm_pb2.Image(data=data, mime_type=mime)))
    return vlm_pb2.GenerateRequest(messages=[vlm_pb2.Message(role="user", content=parts)],
                                   sampling=vlm_pb2.SamplingParams(max_tokens=2))


@pytest.mark.parametrize("second", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_image_is_invalid_argument_then_next_succeeds(server, stub, case, second):
    data, mime = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(_request(data, mime, second)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    field = f"messages[0].content[{2 if second else 1}].image"
    assert convert.field_violations(rpc_status.from_call(err.value)) == [field]
    assert field in err.value.details()
    tokens, _ = collect(stub.Generate(_request(png(24, 24, seed=7), "image/png", second)))
    assert len(tokens) >= 1
    assert wait_idle(server.server.runtime) is not None
