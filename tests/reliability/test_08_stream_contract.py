"""8. Stream contract: every success ends with exactly one Complete; min_tokens=max_tokens gives exactly max_tokens."""

from __future__ import annotations

import pytest

from reliability_helpers import collect, png
from vlm_service._proto.vlm.v1 import vlm_pb2
from vlm_service.client import build_request

SAMPLINGS = [
    {"max_tokens": 5},
    {"max_tokens": 7, "temperature": 0.8, "seed": 3},
    {"max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2},
    {"max_tokens": 8, "stop": ["e", "a"]},
    {"max_tokens": 4, "logprobs": True, "top_logprobs": 3},
    {"max_tokens": 3, "ignore_eos": True},
]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: ",".join(s))
@pytest.mark.parametrize("with_image", [False, True])
def test_every_success_ends_with_one_complete(stub, sampling, with_image):
    request = build_request("tell me", [png(seed=80)] if with_image else [], request_id="", **sampling)
    responses = list(stub.Generate(request))
    assert responses[-1].HasField("complete")
    assert sum(r.HasField("complete") for r in responses) == 1
    assert len({r.request_id for r in responses}) == 1 and responses[0].request_id, "a generated id, echoed"
    tokens, complete = collect(iter(responses))
    assert complete.usage.completion_tokens == len(tokens) <= sampling["max_tokens"]
    assert complete.finish_reason in (vlm_pb2.STOP, vlm_pb2.LENGTH, vlm_pb2.STOP_SEQUENCE)
    assert (complete.usage.image_tokens > 0) == with_image


@pytest.mark.parametrize("n", [1, 2, 9, 33])
def test_min_tokens_equal_max_tokens_gives_exactly_max_tokens(stub, n):
    tokens, complete = collect(stub.Generate(build_request("x", max_tokens=n, min_tokens=n)))
    assert len(tokens) == n and complete.usage.completion_tokens == n
    assert complete.finish_reason == vlm_pb2.LENGTH
