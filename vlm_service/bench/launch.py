"""Start `vlm-service serve` processes for --compare launch specs and wait until their health check says SERVING.

A launch spec is "serve:<serve flags>", e.g. "serve:--model random:qwen3_vl_8b --vit-attention-backend fa3".
The harness adds --host 127.0.0.1 --port <free port> --insecure itself.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

SERVE_PREFIX = "serve:"
_READY_SERVICE = "vlm.v1.VisionLanguageService"  # SERVING once the model is loaded ("" = the process)



def is_launch_spec(text: str) -> bool:
    return text.startswith(SERVE_PREFIX)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launched:
    """A server process started by the harness, and where it listens (plaintext loopback)."""

    spec: str
    address: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL after timeout_s. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(spec: str, log_dir: Path, ready_timeout_s: float = 600.0) -> Launched:
    """Start one server from a launch spec; raises RuntimeError (with the log tail) if it dies or never gets ready."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--insecure"]
    args += shlex.split(spec[len(SERVE_PREFIX):])
    log_path = Path(log_dir) / f"server-{port}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "vlm_service.cli", *args], stdout=log, stderr=subprocess.STDOUT)
    server = Launched(spec, f"127.0.0.1:{port}", proc, log_path)
    try:
        wait_serving(server, ready_timeout_s)
    except Exception:
        server.stop(5)
        raise
    return server


def wait_serving(server: Launched, timeout_s: float) -> None:
    """Poll grpc.health.v1 until SERVING; fail early when the process exits."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server {server.spec!r} exited with {server.proc.returncode}:\n{_tail(server)}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=_READY_SERVICE), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"server {server.spec!r} not SERVING after {timeout_s:.0f} s:\n{_tail(server)}")


def _tail(server: Launched, n: int = 30) -> str:
    try:
        return "\n".join(server.log_path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
