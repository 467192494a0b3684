"""2 and 3 over HTTP: a server-side deadline gives 504 and frees the work; with a queue limit N, N+k concurrent
requests give exactly k 429s (with Retry-After), decided before image decode (the processor's count stays put)."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

from http_helpers import chat_body, client, error_of, events
from reliability_helpers import png, rel_config, wait_idle, wait_until
from test_03_admission import K, N, _CountingProcessor
from test_05_decompression_bomb import bomb_png
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from tests.server_harness import running_server


@pytest.fixture(scope="module")
def admission_server(state_dir):
    cfg = rel_config(state_dir, max_waiting_requests=N, engine={"max_num_seqs": 1}, http_port=0)
    with running_server(cfg, warmup=False) as srv:
        yield srv


def _post(srv, body, headers=None):
    with client(srv) as c:
        return c.post("/v1/chat/completions", json=body, headers=headers)


def test_http_queue_limit_refuses_exactly_k_before_decode(admission_server):
    runtime = admission_server.server.runtime
    counter = _CountingProcessor(runtime.processor)
    runtime.processor = counter
    long = dict(max_tokens=900, min_tokens=900)
    with client(admission_server) as c, cf.ThreadPoolExecutor(N + K) as pool:
        with c.stream("POST", "/v1/chat/completions", json=chat_body("run", [png(seed=130)], stream=True, **long)) \
                as running:
            tokens = events(running)  # held: a dropped generator closes the response, i.e. disconnects
            assert running.status_code == 200 and next(tokens)
            # the waiting ones would answer once they run (the status line waits for the first token): the gRPC
            # Abort ends them below, across transports
            waiting = [pool.submit(_post, admission_server, chat_body(f"w{i}", [png(seed=131 + i)], **long),
                                   {"X-Request-Id": f"wait-{i}"}) for i in range(N)]
            assert wait_until(lambda: runtime.engine.stats().waiting == N), runtime.engine.stats()
            decoded = counter.calls
            extra = list(pool.map(lambda i: _post(admission_server, chat_body(f"x{i}", [bomb_png()], max_tokens=4)),
                                  range(K)))
        assert [r.status_code for r in extra] == [429] * K, extra[0].text
        assert all(r.headers.get("retry-after") for r in extra)
        assert error_of(extra[0])["type"] == "rate_limit_error"
        assert counter.calls == decoded == 1 + N, "refused requests must not reach image decode"
        with admission_server.channel() as ch:
            stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
            assert all(stub.Abort(vlm_pb2.AbortRequest(request_id=f"wait-{i}")).found for i in range(N))
        finishes = [w.result(30).json()["choices"][0]["finish_reason"] for w in waiting]
        assert finishes == ["abort"] * N
    assert wait_idle(runtime, timeout=10.0) is not None
    assert _post(admission_server, chat_body("again", max_tokens=2)).status_code == 200


@pytest.fixture(scope="module")
def deadline_server(state_dir):
    cfg = rel_config(state_dir, default_deadline_s=0.2, http_port=0)
    with running_server(cfg, warmup=False) as srv:
        yield srv


@pytest.mark.parametrize("stream", [False, True])
def test_http_server_deadline_is_504_and_frees_the_work(deadline_server, stream):
    body = chat_body("write a long story", [png(seed=140)], max_tokens=1000, min_tokens=1000)
    start = time.monotonic()
    with client(deadline_server) as c:
        if stream:  # the status line went out with the first token: the deadline is an error event
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                got = list(events(resp))
            assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "deadline_exceeded"
        else:
            resp = c.post("/v1/chat/completions", json=body)
            assert resp.status_code == 504 and error_of(resp)["code"] == "deadline_exceeded"
        assert time.monotonic() - start < 1.5
        assert wait_idle(deadline_server.server.runtime, timeout=2.0) is not None
        assert c.post("/v1/chat/completions", json=chat_body("next", max_tokens=2)).status_code == 200
