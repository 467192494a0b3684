"""9. SIGTERM drain of a real `vlm-service serve` subprocess: health turns NOT_SERVING, new calls UNAVAILABLE, the
in-flight streams finish, exit code 0."""

from __future__ import annotations

import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2

from reliability_helpers import wait_until
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from tests.server_harness import free_port, server_subprocess

TOKENS = 300


def _health(srv) -> int | None:
    try:
        return srv.health(timeout=1.0)
    except grpc.RpcError:
        return None


def test_sigterm_drains_in_flight_streams_and_exits_zero(state_dir, tmp_path):
    port = free_port()
    args = ["--model", "demo", "--device", "cpu", "--insecure", "--port", str(port), "--state-dir", str(state_dir),
            "--drain-timeout-s", "60", "--num-blocks", "128", "--log-format", "json"]
    log_path = tmp_path / "server.log"
    with server_subprocess(args, f"127.0.0.1:{port}", None, log_path=log_path) as srv:
        channel = srv.channel()
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        streams = [stub.Generate(build_request(f"tell {i}", max_tokens=TOKENS, min_tokens=TOKENS)) for i in range(2)]
        results = [[next(s)] for s in streams]
        readers = [threading.Thread(target=lambda s=s, r=r: r.extend(s)) for s, r in zip(streams, results)]
        srv.process.send_signal(signal.SIGTERM)
        for t in readers:
            t.start()
        assert wait_until(lambda: _health(srv) in (health_pb2.HealthCheckResponse.NOT_SERVING, None), 5.0)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(build_request("late", max_tokens=2)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        for t in readers:
            t.join(120)
        for responses in results:
            assert [r.HasField("complete") for r in responses].count(True) == 1
            assert responses[-1].complete.finish_reason == vlm_pb2.LENGTH
            assert sum(len(r.chunk.token_ids) for r in responses if r.HasField("chunk")) == TOKENS
        channel.close()
        assert srv.process.wait(60) == 0, log_path.read_text()[-3000:]
    assert '"status": "OK"' in log_path.read_text(), "the JSON request lines of the drained streams"
