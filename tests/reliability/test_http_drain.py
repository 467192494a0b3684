"""9 on both transports: SIGTERM to a `vlm-service serve --http-port` subprocess: HTTP readiness and liveness turn
503, new HTTP chats get 503 (with Retry-After) and new gRPC calls UNAVAILABLE, the in-flight gRPC and HTTP streams
both finish with all their tokens, exit code 0."""

from __future__ import annotations

import signal
import threading

import grpc
import httpx
import pytest

from http_helpers import chat_body, events
from reliability_helpers import wait_until
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from tests.server_harness import free_port, server_subprocess

TOKENS = 300


def _status(http: httpx.Client, path: str) -> int | None:
    try:
        return http.get(path, timeout=1.0).status_code
    except httpx.HTTPError:
        return None  # the listener is closed: as good as 503 for a balancer


def test_sigterm_drains_grpc_and_http_streams(state_dir, tmp_path):
    port, http_port = free_port(), free_port()
    args = ["--model", "demo", "--device", "cpu", "--insecure", "--port", str(port), "--http-port", str(http_port),
            "--state-dir", str(state_dir), "--drain-timeout-s", "60", "--num-blocks", "128"]
    log_path = tmp_path / "server.log"
    with server_subprocess(args, f"127.0.0.1:{port}", None, log_path=log_path) as srv, \
            httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as http, \
            httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as probe:
        assert probe.get("/health/ready").status_code == 200
        channel = srv.channel()
        grpc_stream = vlm_pb2_grpc.VisionLanguageServiceStub(channel).Generate(
            build_request("tell", max_tokens=TOKENS, min_tokens=TOKENS))
        grpc_got = [next(grpc_stream)]
        body = chat_body("tell", stream=True, max_tokens=TOKENS, min_tokens=TOKENS)
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            http_events = events(resp)
            http_got = [next(http_events)]
            readers = [threading.Thread(target=grpc_got.extend, args=(grpc_stream,)),
                       threading.Thread(target=http_got.extend, args=(http_events,))]
            srv.process.send_signal(signal.SIGTERM)
            for t in readers:
                t.start()
            assert wait_until(lambda: _status(probe, "/health/ready") in (503, None), 5.0)
            late = probe.post("/v1/chat/completions", json=chat_body("late", max_tokens=2))
            assert late.status_code == 503 and late.headers.get("retry-after")
            assert _status(probe, "/health") in (503, None)
            with pytest.raises(grpc.RpcError) as err:
                list(vlm_pb2_grpc.VisionLanguageServiceStub(channel).Generate(build_request("late", max_tokens=2)))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            for t in readers:
                t.join(120)
        assert grpc_got[-1].complete.finish_reason == vlm_pb2.LENGTH
        assert sum(len(r.chunk.token_ids) for r in grpc_got if r.HasField("chunk")) == TOKENS
        assert http_got[-1] == "[DONE]" and http_got[-2]["usage"]["completion_tokens"] == TOKENS
        assert [e["choices"][0]["finish_reason"] for e in http_got[:-2] if e["choices"]][-1] == "length"
        channel.close()
        assert srv.process.wait(60) == 0, log_path.read_text()[-3000:]
