"""3. Admission: with a queue limit N, N+k concurrent requests -> exactly k RESOURCE_EXHAUSTED, decided before image
decode. One request runs (max_num_seqs=1), N wait in the engine; the k extra carry a decompression bomb, so a decode
would have answered INVALID_ARGUMENT instead, and the processor's call count must not move."""

from __future__ import annotations

import threading

import grpc
import pytest

from reliability_helpers import collect, png, rel_config, wait_idle, wait_until
from test_05_decompression_bomb import bomb_png
from vlm_service._proto.vlm.v1 import vlm_pb2_grpc
from vlm_service.client import build_request
from tests.server_harness import running_server

N, K = 3, 4


class _CountingProcessor:
    """Wraps the real processor and counts process() calls (every image decode goes through it)."""

    def __init__(self, inner):
        self.inner, self.calls, self._lock = inner, 0, threading.Lock()

    def process(self, messages):
        with self._lock:
            self.calls += 1
        return self.inner.process(messages)

    async def process_async(self, messages, executor):  # what the servicer calls: the count is the same
        with self._lock:
            self.calls += 1
        return await self.inner.process_async(messages, executor)


def _outcome(stream) -> str:
    try:
        collect(stream)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


@pytest.fixture(scope="module")
def admission_server(state_dir):
    cfg = rel_config(state_dir, max_waiting_requests=N, engine={"max_num_seqs": 1})
    with running_server(cfg, warmup=False) as srv:
        yield srv


def test_queue_limit_refuses_exactly_k_before_decode(admission_server):
    runtime = admission_server.server.runtime
    counter = _CountingProcessor(runtime.processor)
    runtime.processor = counter
    long = dict(max_tokens=900, min_tokens=900)  # within the 1024-token context (more is INVALID_ARGUMENT)
    with admission_server.channel() as ch:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
        running = stub.Generate(build_request("run", [png(seed=30)], **long))
        next(running)
        waiting = [stub.Generate(build_request(f"wait {i}", [png(seed=31 + i)], **long)) for i in range(N)]
        assert wait_until(lambda: runtime.engine.stats().waiting == N), runtime.engine.stats()
        decoded = counter.calls
        extra = [stub.Generate(build_request(f"extra {i}", [bomb_png()], **long)) for i in range(K)]
        outcomes = [_outcome(s) for s in extra]
        assert outcomes == ["RESOURCE_EXHAUSTED"] * K
        assert counter.calls == decoded == 1 + N, "refused requests must not reach image decode"
        for s in [running, *waiting]:
            s.cancel()
    assert wait_idle(runtime) is not None
    with admission_server.channel() as ch:  # the queue empties and admission opens again
        _, complete = collect(vlm_pb2_grpc.VisionLanguageServiceStub(ch).Generate(build_request("again", max_tokens=2)))
    assert complete.usage.completion_tokens >= 1
