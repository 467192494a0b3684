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
