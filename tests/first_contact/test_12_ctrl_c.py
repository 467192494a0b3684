"""Item 12: Ctrl-C with a request in flight starts the drain (health NOT_SERVING, the log says a second Ctrl-C stops
at once); a second Ctrl-C stops the process at once with exit code 130, without waiting for the drain timeout."""

from __future__ import annotations

import signal
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.first_contact.fc_helpers import start_serve, stop
from vlm_service._proto.vlm.v1 import vlm_pb2_grpc
from vlm_service.client import build_request


def _status(served) -> int:
    with grpc.secure_channel(served.target, served.credentials()) as channel:
        req = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(req, timeout=5).status


def test_second_ctrl_c_stops_at_once(tmp_path):
    served = start_serve(tmp_path, "--drain-timeout-s", "600")
    try:
        started = threading.Event()

        def long_request():
            with grpc.secure_channel(served.target, served.credentials()) as channel:
                stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
                try:
                    for _ in stub.Generate(build_request("go", max_tokens=20000, ignore_eos=True), timeout=600):
                        started.set()
                except grpc.RpcError:
                    pass

        worker = threading.Thread(target=long_request, daemon=True)
        worker.start()
        assert started.wait(120)
        served.process.send_signal(signal.SIGINT)
        for _ in range(100):  # the drain has begun once liveness turns NOT_SERVING
            if _status(served) == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            threading.Event().wait(0.1)
        assert served.process.poll() is None  # the first Ctrl-C drains: the stream is still going
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(60) == 130  # long before the 600 s drain timeout or the 20000 tokens
        log = served.log.read_text()
        assert "Ctrl-C again to stop at once" in log and "stopping now" in log
    finally:
        stop(served)
