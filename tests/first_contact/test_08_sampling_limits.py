"""Item 8: max_tokens over the whole context is INVALID_ARGUMENT naming sampling.max_tokens (a max_tokens that fits
the context but not beside this prompt is capped, finish LENGTH); top_logprobs without logprobs is INVALID_ARGUMENT
naming sampling.top_logprobs."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.server.convert import field_violations


@pytest.fixture(scope="module")
def stub(served):
    with grpc.secure_channel(served.target, served.credentials()) as channel:
        yield vlm_pb2_grpc.VisionLanguageServiceStub(channel)


def _refused(stub, **sampling) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(build_request("hi", **sampling), timeout=60))
    return err.value


def test_max_tokens_beyond_the_context(stub):
    context = stub.GetModelInfo(vlm_pb2.GetModelInfoRequest(), timeout=10).max_context
    err = _refused(stub, max_tokens=context + 1)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(rpc_status.from_call(err)) == ["sampling.max_tokens"]
    assert str(context) in err.details()


def test_top_logprobs_needs_logprobs(stub):
    err = _refused(stub, max_tokens=2, top_logprobs=3)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(rpc_status.from_call(err)) == ["sampling.top_logprobs"]
    assert "logprobs" in err.details()
    ok = list(stub.Generate(build_request("hi", max_tokens=2, logprobs=True, top_logprobs=3), timeout=60))
    assert len(ok[0].chunk.logprobs[0].top) == 3
