"""proto <-> types conversion and error mapping."""

from __future__ import annotations

import grpc
import pytest

from vlm_service import errors, types
from vlm_service._proto.vlm.v1 import vlm_pb2
from vlm_service.client import build_request
from vlm_service.engine.engine import validate_sampling
from vlm_service.server import convert


def test_request_round_trip_with_defaults():
    req = convert.request_from_proto(build_request("hi", [b"png"], system="be brief", max_tokens=None), "r1", 5.0)
    assert req.request_id == "r1" and req.arrival_time == 5.0
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[1].content == (types.ImageInput(b"png", ""), "hi")
    assert req.sampling == types.SamplingParams()


def test_sampling_values_carry_over():
    sp = vlm_pb2.SamplingParams(temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=7, max_tokens=9, min_tokens=9,
                                stop=["x"], stop_token_ids=[3], ignore_eos=True, repetition_penalty=1.2,
                                logprobs=True, top_logprobs=2)
    s = convert.sampling_from_proto(sp)
    assert (s.temperature, s.top_k, s.seed, s.max_tokens, s.min_tokens, s.stop, s.stop_token_ids) == \
        (0.5, 5, 7, 9, 9, ("x",), (3,))
    assert s.ignore_eos and s.logprobs and s.top_logprobs == 2 and s.top_p == pytest.approx(0.9)


@pytest.mark.parametrize("kwargs,field", [
    ({"top_p": 1.5}, "sampling.top_p"), ({"min_p": -0.1}, "sampling.min_p"), ({"top_k": -1}, "sampling.top_k"),
    ({"min_tokens": 5, "max_tokens": 4}, "sampling.min_tokens"), ({"min_tokens": -1}, "sampling.min_tokens"),
    ({"temperature": float("nan")}, "sampling.temperature"), ({"top_logprobs": -1}, "sampling.top_logprobs"),
])
def test_bad_sampling_raises_naming_field(kwargs, field):
    with pytest.raises(errors.InvalidInput) as err:  # converted as sent, checked once (by the pipeline)
        validate_sampling(convert.sampling_from_proto(vlm_pb2.SamplingParams(**kwargs)))
    assert err.value.field == field


def test_bad_messages():
    with pytest.raises(errors.InvalidInput) as err:
        convert.messages_from_proto([])
    assert err.value.field == "messages"
    bad_role = [vlm_pb2.Message(role="tool", content=[vlm_pb2.ContentPart(text="x")])]
    with pytest.raises(errors.InvalidInput) as err:
        convert.messages_from_proto(bad_role)
    assert err.value.field == "messages[0].role"
    empty_part = [vlm_pb2.Message(role="user", content=[vlm_pb2.ContentPart()])]
    with pytest.raises(errors.InvalidInput) as err:
        convert.messages_from_proto(empty_part)
    assert err.value.field == "messages[0].content[0]"


def test_outputs_to_proto():
    delta = types.TokenDelta("r", (1, 2), "ab", (types.TokenLogprob(1, -0.5, ((1, -0.5), (4, -1.0))),))
    chunk = convert.output_to_proto(delta)
    assert chunk.request_id == "r" and list(chunk.chunk.token_ids) == [1, 2] and chunk.chunk.text == "ab"
    assert [t.token_id for t in chunk.chunk.logprobs[0].top] == [1, 4]
    fin = types.Finished("r", types.FinishReason.STOP_SEQUENCE, "x", types.Usage(3, 2, 1, 4), types.Timings(ttft_ms=7))
    done = convert.output_to_proto(fin).complete
    assert done.finish_reason == vlm_pb2.STOP_SEQUENCE and done.matched_stop == "x"
    assert (done.usage.prompt_tokens, done.usage.image_tokens, done.timings.ttft_ms) == (3, 4, 7.0)


@pytest.mark.parametrize("exc,code", [
    (errors.InvalidImage("x", field="f"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.DuplicateRequest("x"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ShuttingDown("x"), grpc.StatusCode.UNAVAILABLE),
])
def test_error_codes_and_rich_details(exc, code):
    assert convert.status_code(exc) == code
    status = convert.error_status(exc)
    assert status.code == code.value[0]
    assert convert.field_violations(status) == (["f"] if exc.field else [])
