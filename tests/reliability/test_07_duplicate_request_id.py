"""7. Duplicate in-flight request_id -> ALREADY_EXISTS; reuse after completion works."""

from __future__ import annotations

import grpc
import pytest

from reliability_helpers import collect, wait_idle
from vlm_service._proto.vlm.v1 import vlm_pb2
from vlm_service.client import build_request


def test_duplicate_in_flight_id_is_already_exists(server, stub):
    first = stub.Generate(build_request("a", request_id="dup-7", max_tokens=800, min_tokens=800))
    assert next(first).request_id == "dup-7"
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(build_request("b", request_id="dup-7", max_tokens=1)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert next(first).HasField("chunk"), "the first request is not disturbed"
    first.cancel()
    assert wait_idle(server.server.runtime) is not None
    _, complete = collect(stub.Generate(build_request("c", request_id="dup-7", max_tokens=1)))
    assert complete.finish_reason in (vlm_pb2.LENGTH, vlm_pb2.STOP)


def test_reuse_after_completion(stub):
    for _ in range(3):
        responses = list(stub.Generate(build_request("again", request_id="reused-7", max_tokens=2)))
        assert {r.request_id for r in responses} == {"reused-7"}
        assert responses[-1].HasField("complete")
