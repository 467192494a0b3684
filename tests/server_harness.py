"""Helpers for tests and benchmarks/soak.py: a throwaway PKI and the REAL server on loopback or a UDS,
in-process (a background thread with its own event loop) or as a subprocess (`python -m vlm_service.cli serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vlm_service.config import Config
from vlm_service.server.pki import LOCAL_NAMES, KeyPair, make_ca, make_leaf

SERVICE_NAME = "vlm.v1.VisionLanguageService"


@dataclass(frozen=True)
class TestPKI:
    """ca signs server and client; other_ca signs other_client (a client the server must refuse under mTLS)."""

    ca: KeyPair
    server: KeyPair
    client: KeyPair
    other_ca: KeyPair
    other_client: KeyPair


def make_test_pki(folder: str | Path) -> TestPKI:
    """Write a CA, a localhost server certificate, a client certificate and an unrelated CA + client under folder."""
    folder = Path(folder)
    ca = make_ca(folder / "ca", "test CA")
    other = make_ca(folder / "other-ca", "unrelated CA")
    return TestPKI(ca=ca, server=make_leaf(ca, folder / "server", "localhost", LOCAL_NAMES),
                   client=make_leaf(ca, folder / "client", "client", client=True), other_ca=other,
                   other_client=make_leaf(other, folder / "other-client", "intruder", client=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_channel_credentials(cfg: Config, on_uds: bool) -> grpc.ChannelCredentials | None:
    """What a client needs for this config: None (plaintext), or TLS trusting the dev CA of cfg's state dir."""
    from vlm_service.server.tls import channel_credentials, uses_tls

    if not uses_tls(cfg.server, on_uds):
        return None
    if cfg.server.tls.cert is None:
        return channel_credentials(Path(cfg.server.state_dir) / "tls" / "ca.crt")
    return None  # real certificates: the caller knows their CA and passes credentials itself


@dataclass
class RunningServer:
    """A started server: `target` to dial, `credentials` (None = plaintext), and the in-process Server or Popen."""

    target: str
    credentials: grpc.ChannelCredentials | None
    server: object = None
    loop: asyncio.AbstractEventLoop | None = None
    process: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    def channel(self, credentials: grpc.ChannelCredentials | None = None, options=()) -> grpc.Channel:
        creds = credentials if credentials is not None else self.credentials
        if creds is not None and self.target.startswith("unix:"):
            options = [*options, ("grpc.ssl_target_name_override", "localhost")]
        if creds is None:
            return grpc.insecure_channel(self.target, options=list(options))
        return grpc.secure_channel(self.target, creds, options=list(options))

    def call(self, coro, timeout: float = 60.0):
        """Run a coroutine on the server's loop (in-process servers only) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def health(self, service: str = SERVICE_NAME, timeout: float = 5.0) -> int:
        with self.channel() as ch:
            req = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(ch).Check(req, timeout=timeout).status


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


@contextlib.contextmanager
def running_server(cfg: Config, load_runtime: Callable[[Config], object] | None = None,
                   credentials: grpc.ChannelCredentials | None = None, warmup: bool = True) -> Iterator[RunningServer]:
    """The real server in this process on its own event-loop thread; drained and stopped on exit.

    Use port 0 in cfg for a free port. `credentials` default to what the config implies (dev CA, or plaintext).
    """
    if load_runtime is None:
        from vlm_service.runtime import load_runtime
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), daemon=True, name="vlm-server")
    thread.start()
    server = asyncio.run_coroutine_threadsafe(_make_server(cfg, load_runtime), loop).result(30)
    try:
        targets = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        asyncio.run_coroutine_threadsafe(server.load(warmup=warmup), loop).result(600)
        creds = credentials if credentials is not None else default_channel_credentials(cfg, cfg.server.uds is not None)
        yield RunningServer(target=targets[0], credentials=creds, server=server, loop=loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.drain(), loop).result(cfg.server.drain_timeout_s + 30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _make_server(cfg, load_runtime):
    from vlm_service.server.app import Server

    return Server(cfg, load_runtime)


def wait_serving(target: str, credentials: grpc.ChannelCredentials | None, timeout: float = 300.0,
                 process: subprocess.Popen | None = None) -> None:
    """Poll health until the service is SERVING (raises TimeoutError, or RuntimeError if the process died)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        ch = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        with ch:
            try:
                req = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
                if health_pb2_grpc.HealthStub(ch).Check(req, timeout=1.0).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING after {timeout}s")


@contextlib.contextmanager
def server_subprocess(args: list[str], target: str, credentials: grpc.ChannelCredentials | None,
                      env: dict | None = None, ready_timeout: float = 300.0,
                      log_path: Path | None = None) -> Iterator[RunningServer]:
    """`vlm-service serve <args>` as a child process; waits until SERVING; SIGTERM and reap on exit.

    `target`/`credentials` must match the args (e.g. --port from free_port()).
    """
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    cmd = [sys.executable, "-m", "vlm_service.cli", "serve", *args]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_serving(target, credentials, ready_timeout, proc)
        yield RunningServer(target=target, credentials=credentials, process=proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log_path:
            out.close()
