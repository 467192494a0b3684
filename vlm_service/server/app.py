"""Build and run the grpc.aio server: listeners (TCP/TLS, UDS), health, reflection, load, warm-up and drain.

Lifecycle: start() binds and answers health at once ("" SERVING, the service NOT_SERVING); load() attaches the runtime
and warms it up, then the service turns SERVING; drain() (SIGTERM/SIGINT) turns it NOT_SERVING, refuses new calls with
UNAVAILABLE, lets in-flight streams finish within drain_timeout_s, stops the engine and the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from vlm_service import types
from vlm_service._proto.vlm.v1 import vlm_pb2
from vlm_service.config import Config
from vlm_service.errors import ModelLoadError
from vlm_service.pipeline import Pipeline
from vlm_service.server import auth, tls, wire
from vlm_service.server.metrics import poll_engine, start_metrics
from vlm_service.server.servicer import VisionLanguageServicer

log = logging.getLogger(__name__)

SERVICE_NAME = vlm_pb2.DESCRIPTOR.services_by_name["VisionLanguageService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _grpc_options(cfg: Config) -> list[tuple[str, int]]:
    limit = cfg.server.limits.max_request_bytes
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0)]


def _prepare_socket(path: Path) -> None:
    """Remove a stale socket file (never a live one, nor any other kind of file) and make sure the folder exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        if _socket_is_live(path):
            raise ValueError(f"--uds {path}: a live server is listening on it; stop it or choose another path")
        path.unlink()
    elif path.exists():
        raise ValueError(f"--uds {path}: exists and is not a socket")


def _socket_is_live(path: Path) -> bool:
    """Whether something accepts connections on the socket file (refused = a stale file left by a dead server)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:  # a timeout (full backlog) or no permission: someone owns it, never take it over
            return True


class Server:
    """One vlm-service server; see the module docstring for its lifecycle."""

    def __init__(self, cfg: Config, load_runtime: Callable[[Config], object]):
        self.cfg = cfg
        self._load_runtime = load_runtime
        self.runtime = None
        self.api_keys = auth.ApiKeys.from_config(cfg.server.api_keys, cfg.server.api_keys_file)
        self.pipeline = Pipeline(cfg.server.limits)  # one request lifecycle under every transport
        self.servicer = VisionLanguageServicer(cfg.server.limits, pipeline=self.pipeline, api_keys=self.api_keys)
        self.health = HealthServicer()
        self.targets: list[str] = []
        self.cert_fetcher = None
        self._server = grpc.aio.server(options=_grpc_options(cfg))
        self._stopped = asyncio.Event()
        self._drain_started = False
        self._poller: asyncio.Task | None = None
        self.http = None  # server/http_serve.HttpListener while the HTTP front door runs (--http-port)
        self._door = None

    async def start(self) -> list[str]:
        """Register the services, bind the listeners and start answering; returns the client targets."""
        wire.add_servicer(self.servicer, self._server)  # undecodable requests -> INVALID_ARGUMENT
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME),
                                            self._server)
        tls.ensure_private_dir(Path(self.cfg.server.state_dir))  # 0700 whatever the umask
        self.targets = self._bind()
        self.servicer.metrics = start_metrics(self.cfg.server, self.cfg.model.model)
        await self._server.start()
        if self.cfg.server.http.port is not None:
            await self._start_http()
        if self.cfg.server.uds is not None:  # the socket file exists once the server started
            os.chmod(Path(self.cfg.server.uds).resolve(), 0o600)
        await self.health.set("", SERVING)
        await self.health.set(SERVICE_NAME, NOT_SERVING)
        log.info("listening on %s", ", ".join(self.targets))
        return self.targets

    def _bind(self) -> list[str]:
        """TCP first (when on), then the UDS; returns client targets in that order."""
        s, targets = self.cfg.server, []
        if s.tcp:
            host = f"[{s.host}]" if ":" in s.host else s.host
            port = self._add_port(f"{host}:{s.port}", on_uds=False)
            targets.append(f"{host}:{port}")
        if s.uds is not None:
            path = Path(s.uds).resolve()
            _prepare_socket(path)
            old = os.umask(0o177)  # the socket is born 0600 (no window where others could connect)
            try:
                self._add_port(f"unix:{path}", on_uds=True)
            finally:
                os.umask(old)
            targets.append(f"unix:{path}")
        return targets

    def _add_port(self, address: str, on_uds: bool) -> int:
        try:
            return self._add_listener(address, on_uds)
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            flag = "--uds" if on_uds else "--host/--port"
            raise ValueError(f"{flag}: cannot listen on {address}: in use by another process (another vlm-service?) "
                             "or not an address of this machine; --port 0 picks a free port") from exc

    def _add_listener(self, address: str, on_uds: bool) -> int:
        if not tls.uses_tls(self.cfg.server, on_uds):
            if self.cfg.server.tls.insecure:
                log.warning("PLAINTEXT on %s (--insecure): anyone who can reach it can read and send requests", address)
            return self._server.add_insecure_port(address)
        creds, self.cert_fetcher = tls.server_credentials(self.cfg.server)
        mode = "mTLS" if self.cfg.server.tls.client_ca else "TLS"
        log.info("%s on %s", mode, address)
        if not on_uds and self.cfg.server.tls.cert is None and not is_loopback(self.cfg.server.host):
            log.warning("--host %s with the dev certificate, which names only localhost, 127.0.0.1 and ::1: remote "
                        "clients will fail the hostname check. Give --tls-cert/--tls-key for this host's name, or "
                        "clients pass --server-name localhost (and trust STATE_DIR/tls/ca.crt)", self.cfg.server.host)
        return self._server.add_secure_port(address, creds)

    async def _start_http(self) -> None:
        """The OpenAI-compatible front door on the same loop, pipeline and engine (imported lazily: the http extra)."""
        from vlm_service.metrics import Metrics
        try:
            from vlm_service.server.http_app import FrontDoor, build_app
            from vlm_service.server.http_serve import start_http
        except ImportError as exc:
            raise RuntimeError(f"--http-port needs the http extra: pip install 'vlm-service[http]' ({exc})") from exc

        if self.cfg.server.http.metrics and self.pipeline.metrics is None:  # /metrics on the HTTP port only
            self.pipeline.metrics = Metrics(self.cfg.model.model)
        self._door = FrontDoor(self.cfg, self.pipeline, self.api_keys, server=self)
        self.http = await start_http(build_app(self._door), self.cfg.server)

    async def load(self, warmup: bool = True) -> None:
        """Load the runtime off the event loop, start the engine, warm up, then mark the service SERVING."""
        runtime = await asyncio.to_thread(self._load_runtime, self.cfg)
        self._watch_parallel(runtime)
        runtime.start()
        if warmup:
            await _warmup(runtime, self.cfg.server.warmup_image_side)
        self.runtime = runtime
        self.servicer.attach(runtime)
        if self.servicer.metrics is not None:
            self._poller = asyncio.ensure_future(poll_engine(self.servicer.metrics, runtime.engine))
        await self.health.set(SERVICE_NAME, SERVING)
        log.info("model %s ready on %s", runtime.info.model_id, runtime.info.device)

    def _watch_parallel(self, runtime) -> None:
        """A tensor-parallel rank that dies turns health NOT_SERVING at once and refuses new calls; the runtime
        then exits the process with status 1 (engine/parallel/launch.py)."""
        parallel = (getattr(runtime, "extras", None) or {}).get("parallel")
        if parallel is None:
            return
        loop = asyncio.get_running_loop()
        parallel.on_failure(lambda reason: asyncio.run_coroutine_threadsafe(self._fail_health(), loop))

    async def _fail_health(self) -> None:
        await self.health.set(SERVICE_NAME, NOT_SERVING)
        await self.health.set("", NOT_SERVING)
        self.servicer.start_drain()

    @property
    def draining(self) -> bool:
        return self._drain_started

    async def drain(self) -> bool:
        """Stop taking work and let in-flight streams finish; True when they all finished in time."""
        if self._drain_started:  # a second signal: the first drain is already under way
            await self._stopped.wait()
            return True
        self._drain_started = True
        log.info("draining: %d in flight, up to %.1fs", self.servicer.inflight, self.cfg.server.drain_timeout_s)
        await self.health.set(SERVICE_NAME, NOT_SERVING)
        await self.health.set("", NOT_SERVING)
        self.servicer.start_drain()
        clean = await self.servicer.wait_idle(self.cfg.server.drain_timeout_s)
        if self.runtime is not None:
            await self.runtime.stop(drain=False)
        await self._server.stop(grace=1.0)
        if self.http is not None:
            await self.http.stop()
            await self._door.close()
        self._stop_metrics()
        self.servicer.close()
        self._stopped.set()
        log.info("drained %s", "cleanly" if clean else "with streams cut at the timeout")
        return clean

    def _stop_metrics(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.servicer.metrics is not None:
            self.servicer.metrics.close()

    async def wait(self) -> None:
        await self._stopped.wait()


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (a name other than localhost counts as reachable from elsewhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _warmup(runtime, image_side: int = 0) -> None:
    """A tiny text-only request through processor and engine, so the first user does not pay for lazy setup; then
    two requests with an image_side² noise image (two different images, so the vision cache cannot answer): the
    first runs the vision tower eagerly (kernel loads, cuDNN graphs, auto's measurements for its shapes), the second
    captures the tower's CUDA graph for that size (models/vision_graphs.py)."""
    import numpy as np

    from vlm_service.demo.images import make_image

    images = [make_image(np.random.default_rng(seed), image_side, image_side, "noise", "png")
              for seed in range(2 if image_side else 0)]
    requests = [("hi",)] + [(types.ImageInput(img.data, img.mime_type), "hi") for img in images]
    for i, content in enumerate(requests):
        messages = (types.ChatMessage(role="user", content=content),)
        processed = await asyncio.to_thread(runtime.processor.process, messages)
        runtime.engine.reserve(f"warmup-{i}")
        async for _ in runtime.engine.generate(f"warmup-{i}", processed, types.SamplingParams(max_tokens=1), 0.0):
            pass


def _install_signals(server: Server) -> None:
    """SIGTERM/SIGINT start a drain; a second SIGINT (Ctrl-C again) stops at once, exit code 130."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, server, sig)


def _on_signal(server: Server, sig: int) -> None:
    name = signal.Signals(sig).name
    if sig == signal.SIGINT and server.draining:
        log.warning("got SIGINT again: stopping now, in-flight requests are cut")
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(130)  # the engine thread and the gRPC threads go with the process
    hint = " (Ctrl-C again to stop at once)" if sig == signal.SIGINT else ""
    log.info("got %s: draining%s", name, hint)
    asyncio.ensure_future(server.drain())


async def serve(cfg: Config, load_runtime: Callable[[Config], object] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the process exit code (0 after a drain)."""
    if load_runtime is None:
        from vlm_service.runtime import load_runtime
    server = Server(cfg, load_runtime)
    try:
        await server.start()
    except (OSError, RuntimeError) as exc:  # a taken socket or port, unusable TLS files
        raise ValueError(f"cannot start: {exc}") from None  # the CLI prints it as one line, exit 2
    _install_signals(server)
    loader = asyncio.ensure_future(server.load())
    await asyncio.wait([loader, asyncio.ensure_future(server.wait())], return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and loader.exception() is not None:
        exc = loader.exception()
        log.error("model load failed: %s", exc)
        await server.drain()
        return 2 if isinstance(exc, (ValueError, ModelLoadError)) else 1  # 2: the checkpoint or flags are at fault
    await server.wait()
    return 0
