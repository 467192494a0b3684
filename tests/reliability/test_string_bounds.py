"""Bounds on every string a client sends (issue 12): a 1 MB request_id / role / mime type / stop string is refused
with INVALID_ARGUMENT naming the field and quoting only a short prefix, so a standard grpc client (16 KiB metadata
limit) gets the intended status; ids are limited to a safe character set."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from reliability_helpers import collect, png
from vlm_service.client import build_request
from vlm_service.server import convert

MEGA = "\n\x1b[31m" + "x" * (1 << 20)


def _refused(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(request, timeout=30))
    return err.value


def _mega_request(where: str):
    req = build_request("hi", [png(16, 16, seed=5)], max_tokens=1)
    if where == "request_id":
        req.request_id = MEGA
    elif where == "role":
        req.messages[0].role = MEGA
    elif where == "mime_type":
        req.messages[0].content[0].image.mime_type = MEGA
    elif where == "stop":
        req.sampling.stop.append(MEGA)
    return req


@pytest.mark.parametrize("where,field", [("request_id", "request_id"), ("role", "messages[0].role"),
                                         ("mime_type", "messages[0].content[0].image.mime_type"),
                                         ("stop", "sampling.stop[0]")])
def test_megabyte_string_is_invalid_argument_with_a_short_message(stub, where, field):
    err = _refused(stub, _mega_request(where))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert convert.field_violations(rpc_status.from_call(err)) == [field]
    assert err.details().startswith(field) and len(err.details()) < 300
    assert "\n" not in err.details() and "\x1b" not in err.details()
    assert collect(stub.Generate(build_request("still fine", max_tokens=1)))[0]


@pytest.mark.parametrize("rid", ["a b", "x\ny", "id\r", "\x1b[2J", "caf\u00e9", "a|b", "x" * 129, "ok;rm"])
def test_unsafe_request_ids_are_refused(stub, rid):
    err = _refused(stub, build_request("hi", request_id=rid, max_tokens=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err)) == ["request_id"]


def test_safe_request_id_is_echoed(stub):
    rid = "tenant-1/job_2:step.3-" + "z" * 106  # 128 chars of the allowed set
    responses = list(stub.Generate(build_request("hi", request_id=rid, max_tokens=2)))
    assert responses and all(r.request_id == rid for r in responses)


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.sampling.stop.extend(["s"] * (convert.MAX_STOP_STRINGS + 1)), "sampling.stop"),
    (lambda r: r.sampling.stop_token_ids.extend([1] * (convert.MAX_STOP_TOKEN_IDS + 1)), "sampling.stop_token_ids"),
    (lambda r: r.messages[0].content.add(text="y" * (convert.MAX_TEXT_CHARS + 1)), "messages"),
    (lambda r: [r.messages[0].content.add(text="y") for _ in range(convert.MAX_PARTS)], "messages"),
])
def test_counts_and_totals_are_bounded(stub, mutate, field):
    req = build_request("hi", max_tokens=1)
    mutate(req)
    err = _refused(stub, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err)) == [field]


def test_abort_with_a_megabyte_id_is_invalid_argument(stub):
    from vlm_service._proto.vlm.v1 import vlm_pb2

    with pytest.raises(grpc.RpcError) as err:
        stub.Abort(vlm_pb2.AbortRequest(request_id=MEGA), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.value.details()) < 300
