"""1. Cancel mid-stream: the abort reaches the engine within 500 ms; blocks and request state return to zero."""

from __future__ import annotations

import time

from reliability_helpers import png, wait_idle
from vlm_service.client import build_request


def test_cancel_mid_stream_frees_blocks_and_state(server, stub):
    runtime = server.server.runtime
    stream = stub.Generate(build_request("describe", [png(seed=1)], max_tokens=800, min_tokens=800))
    next(stream)
    assert runtime.engine.stats().kv_blocks_used > 0, "the running request holds KV blocks"
    start = time.monotonic()
    stream.cancel()
    elapsed = wait_idle(runtime, timeout=2.0)
    assert elapsed is not None, f"engine still busy 2 s after cancel: {runtime.engine.stats()}"
    assert elapsed < 0.5, f"the abort took {elapsed * 1e3:.0f} ms to reach the engine (spec: 500 ms)"
    assert time.monotonic() - start < 2.0
    s = runtime.engine.stats()
    assert (s.kv_blocks_used, s.tracked_requests, s.running, s.waiting, s.reserved) == (0, 0, 0, 0, 0)
    assert server.server.servicer.inflight == 0


def test_abort_rpc_mid_stream_ends_the_stream_with_abort(server, stub):
    from vlm_service._proto.vlm.v1 import vlm_pb2

    stream = stub.Generate(build_request("go", request_id="to-abort", max_tokens=800, min_tokens=800))
    next(stream)
    assert stub.Abort(vlm_pb2.AbortRequest(request_id="to-abort")).found
    last = list(stream)[-1]
    assert last.HasField("complete") and last.complete.finish_reason == vlm_pb2.ABORT
    assert wait_idle(server.server.runtime) is not None


def test_abort_while_the_request_is_preprocessed_ends_the_stream_with_abort(server, stub, monkeypatch):
    """Abort lands while the image is being decoded (held there by the test): found=true, and the stream then ends
    with ABORT and no tokens, not a full run that ends with LENGTH."""
    import threading

    from vlm_service._proto.vlm.v1 import vlm_pb2

    processor = server.server.runtime.processor
    real, entered, release = processor.process, threading.Event(), threading.Event()

    def held(messages):
        entered.set()
        release.wait(10)
        return real(messages)

    monkeypatch.setattr(processor, "process", held)
    stream = stub.Generate(build_request("go", [png(seed=7)], request_id="pre-abort", max_tokens=50, min_tokens=50),
                           timeout=30)
    assert entered.wait(10)
    assert stub.Abort(vlm_pb2.AbortRequest(request_id="pre-abort")).found
    release.set()
    responses = list(stream)
    assert [r.HasField("complete") for r in responses] == [True]
    assert responses[0].complete.finish_reason == vlm_pb2.ABORT and responses[0].complete.usage.completion_tokens == 0
    assert wait_idle(server.server.runtime) is not None
