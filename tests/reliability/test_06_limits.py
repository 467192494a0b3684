"""6. Limits: a message over the receive cap -> RESOURCE_EXHAUSTED; too many images / a prompt over the context ->
INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import os

import grpc
import pytest
from grpc_status import rpc_status

from reliability_helpers import CONTEXT, MAX_IMAGES, RECEIVE_CAP, collect, png, wait_idle
from vlm_service.client import build_request
from vlm_service.server import convert


def _refused(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(request))
    return err.value


def test_message_over_receive_cap_is_resource_exhausted(server, stub):
    err = _refused(stub, build_request("x", [os.urandom(RECEIVE_CAP + 1024)], max_tokens=1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert collect(stub.Generate(build_request("fine", max_tokens=1)))[0]


def test_too_many_images_is_invalid_argument(server, stub):
    images = [png(16, 16, seed=60 + i) for i in range(MAX_IMAGES + 1)]
    err = _refused(stub, build_request("many", images, max_tokens=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err)) == ["messages"]
    assert collect(stub.Generate(build_request("ok", images[:MAX_IMAGES], max_tokens=1)))[0]


def test_prompt_over_context_is_invalid_argument(server, stub):
    err = _refused(stub, build_request("word " * (CONTEXT + 10), max_tokens=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err)) == ["messages"]
    assert wait_idle(server.server.runtime) is not None


def test_max_tokens_beyond_context_room_is_refused_or_capped(server, stub):
    """A prompt that fits, asking for more tokens than the context has left: refused up front, never a hang."""
    try:
        tokens, complete = collect(stub.Generate(build_request("word " * (CONTEXT - 20), max_tokens=100,
                                                               min_tokens=100)))
        assert len(tokens) <= 100
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wait_idle(server.server.runtime) is not None
