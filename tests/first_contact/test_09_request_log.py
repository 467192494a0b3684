"""Item 9: the request log says what happened. A cancelled request logs the tokens it streamed; one ended by the
Abort RPC logs ABORTED; a client deadline logs DEADLINE_EXCEEDED; pixels are the images as sent (what the bench
records), vision_pixels what the tower saw; queue_ms excludes preprocessing (preprocess_ms apart)."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.first_contact.fc_helpers import png
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request


@pytest.fixture(scope="module")
def stub(served):
    with grpc.secure_channel(served.target, served.credentials()) as channel:
        yield vlm_pb2_grpc.VisionLanguageServiceStub(channel)


def _long(request_id: str, **kw):
    return build_request("go on", request_id=request_id, max_tokens=5000, ignore_eos=True, **kw)


def test_cancelled_request_logs_the_tokens_it_streamed(served, stub):
    call = stub.Generate(_long("log-cancel"), timeout=120)
    seen = 0
    for resp in call:
        seen += len(resp.chunk.token_ids)
        if seen >= 20:
            break
    call.cancel()
    [line] = served.request_lines("log-cancel")
    assert line["status"] == "CANCELLED" and line["completion_tokens"] >= seen


def test_aborted_request_logs_aborted(served, stub):
    call = stub.Generate(_long("log-abort"), timeout=120)
    next(call)  # running
    assert stub.Abort(vlm_pb2.AbortRequest(request_id="log-abort"), timeout=10).found
    responses = list(call)
    assert responses[-1].HasField("complete")
    [line] = served.request_lines("log-abort")
    assert line["status"] == "ABORTED" and line["completion_tokens"] >= 1


def test_client_deadline_logs_deadline_exceeded(served, stub):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(_long("log-deadline"), timeout=1.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [line] = served.request_lines("log-deadline")
    assert line["status"] == "DEADLINE_EXCEEDED" and line["completion_tokens"] >= 1


def test_pixels_as_sent_and_queue_without_preprocessing(served, stub):
    image = png(1000, 700, noisy=True)  # resized by the processor: vision pixels differ from the 700,000 sent
    responses = list(stub.Generate(build_request("describe", [image], request_id="log-pixels", max_tokens=2),
                                   timeout=120))
    timings = responses[-1].complete.timings
    [line] = served.request_lines("log-pixels")
    assert line["pixels"] == 1000 * 700 and line["vision_pixels"] not in (0, 1000 * 700)
    assert line["queue_ms"] == pytest.approx(timings.queue_ms, abs=0.01)
    assert line["preprocess_ms"] == pytest.approx(timings.preprocess_ms, abs=0.01) and timings.preprocess_ms > 0
    # arrival -> first scheduled is queue + preprocess; TTFT covers both and the prefill
    assert timings.queue_ms + timings.preprocess_ms <= timings.ttft_ms + 0.01


def test_queue_ms_excludes_preprocessing_in_the_engine():
    """The engine's own arithmetic, with the clock set: arrival t0, preprocessing 800 ms, scheduled at t0 + 1 s."""
    import torch

    from vlm_service import types
    from vlm_service.engine.engine import LLMEngine, _Tracked
    from vlm_service.engine.sequence import Sequence

    processed = types.ProcessedInput(input_ids=[1, 2, 3], visuals=[], positions=torch.zeros(3, 3, dtype=torch.long),
                                     mrope_delta=0, preprocess_ms=800.0)
    seq = Sequence("q", [1, 2, 3], types.SamplingParams(), 4, processed=processed)
    t0 = time.monotonic() - 5
    seq.times.arrival, seq.times.first_scheduled, seq.times.first_token = t0, t0 + 1.0, t0 + 1.5

    class _Out:
        num_output = 0

    fin = LLMEngine._finished(None, _Tracked(seq, _Out(), None), types.FinishReason.STOP, "")
    assert fin.timings.queue_ms == pytest.approx(200.0, abs=1.0)
    assert fin.timings.preprocess_ms == 800.0 and fin.timings.ttft_ms == pytest.approx(1500.0, abs=1.0)


