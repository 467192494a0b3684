"""SIGTERM drain of a real `vlm-service serve` subprocess: readiness NOT_SERVING, new calls UNAVAILABLE, the in-flight
stream completes, exit code 0."""

from __future__ import annotations

import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from tests.server_harness import free_port, server_subprocess
from vlm_service.server.tls import channel_credentials


def test_sigterm_drains_in_flight_stream_and_exits_zero(state_dir, tmp_path):
    pytest.importorskip("vlm_service.demo.checkpoint")
    port = free_port()
    args = ["--model", "demo", "--device", "cpu", "--port", str(port), "--state-dir", str(state_dir),
            "--drain-timeout-s", "60", "--num-blocks", "128"]
    from vlm_service.server.pki import ensure_dev_pki

    ca, _ = ensure_dev_pki(state_dir / "tls")  # what the server will reuse; the client trusts it
    creds = channel_credentials(ca.cert)
    target = f"127.0.0.1:{port}"
    with server_subprocess(args, target, creds, log_path=tmp_path / "server.log") as srv:
        channel = srv.channel()
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        stream = stub.Generate(build_request("tell", max_tokens=300, min_tokens=300))
        first = next(stream)
        srv.process.send_signal(signal.SIGTERM)
        responses = [first]
        reader = threading.Thread(target=lambda: responses.extend(stream))
        reader.start()
        states = set()
        for _ in range(50):  # readiness flips soon after the signal
            try:
                states.add(srv.health())
            except grpc.RpcError:
                break
            if health_pb2.HealthCheckResponse.NOT_SERVING in states:
                break
        assert health_pb2.HealthCheckResponse.NOT_SERVING in states
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(build_request("late", max_tokens=2)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        reader.join(120)
        completes = [r for r in responses if r.HasField("complete")]
        assert len(completes) == 1 and completes[0].complete.finish_reason == vlm_pb2.LENGTH
        assert sum(len(r.chunk.token_ids) for r in responses if r.HasField("chunk")) == 300
        channel.close()
        assert srv.process.wait(60) == 0, (tmp_path / "server.log").read_text()[-3000:]
