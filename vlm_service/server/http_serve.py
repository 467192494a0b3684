"""Run the HTTP app with uvicorn inside the gRPC server's asyncio loop, with TLS from the same certificates.

- TLS policy as gRPC's TCP listener (server/tls.py): on unless --insecure; the dev CA's localhost certificate when no
  --tls-cert is given; mTLS when --tls-client-ca is given. Each request's ASGI scope then carries the connection's
  client certificate (the ASGI TLS extension, server/http_peer.py), which is the caller's identity as on gRPC.
- Certificate files replaced on disk are served to NEW connections without a restart: the context's handshake
  callback (sni_callback, called on every ClientHello, with or without SNI) swaps in a context built from the new
  files when their stamp changed; a half-written pair keeps the old context.
- uvicorn's own signal handling is off: SIGTERM/SIGINT belong to the server's drain (server/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from vlm_service.config import ServerConfig
from vlm_service.server import http_peer, tls

log = logging.getLogger(__name__)


class ReloadingSSLContext:
    """A server SSLContext whose certificate files are re-read for new handshakes when they change."""

    def __init__(self, pair: tls.KeyPair, client_ca: Path | None):
        self._pair, self._client_ca = pair, client_ca
        self._paths = [pair.cert, pair.key] + ([client_ca] if client_ca else [])
        self._lock = threading.Lock()
        self._stamp = tls._stamp(self._paths)
        self.context = self._build()
        self.reloads = 0

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._pair.cert, self._pair.key)
        if self._client_ca is not None:
            ctx.load_verify_locations(cafile=str(self._client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = self._on_hello
        return ctx

    def _current(self) -> ssl.SSLContext:
        with self._lock:
            try:
                stamp = tls._stamp(self._paths)
                if stamp != self._stamp:
                    self.context, self._stamp = self._build(), stamp
                    self.reloads += 1
                    log.info("HTTP TLS certificate files changed; new connections use the new ones")
            except (OSError, ssl.SSLError) as exc:  # mid-rotation: keep the old pair
                log.warning("HTTP TLS certificate reload skipped: %s", exc)
            return self.context

    def _on_hello(self, ssl_obj, server_name, ctx) -> None:
        fresh = self._current()
        if fresh is not ctx:
            ssl_obj.context = fresh


def ssl_context(cfg: ServerConfig) -> ReloadingSSLContext | None:
    """None for plaintext (--insecure), else a reloading context (mTLS when a client CA is given)."""
    if not tls.uses_tls(cfg, on_uds=False):
        return None
    pair, _ = tls.server_keypair(cfg)
    return ReloadingSSLContext(pair, Path(cfg.tls.client_ca) if cfg.tls.client_ca else None)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass
class HttpListener:
    """A started uvicorn server: its port, URL, and the task running it."""

    server: object
    task: asyncio.Task
    port: int
    url: str
    tls: ReloadingSSLContext | None

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let open responses end (they have, after a drain), close connections."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except asyncio.TimeoutError:
            self.server.force_exit = True
            await self.task


async def start_http(app, cfg: ServerConfig) -> HttpListener:
    """Bind cfg.host:cfg.http.port (0 = a free port) and serve `app` on the running loop."""
    import uvicorn

    class _Embedded(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # SIGTERM/SIGINT are the drain's (server/app.py)
            yield

    tls_ctx = ssl_context(cfg)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    config.load()  # loaded now, so serve() keeps the context set here (any uvicorn version)
    config.ssl = tls_ctx.context if tls_ctx else None
    if tls_ctx is not None:  # requests carry the connection's client certificate (mTLS identity, server/http_peer.py)
        config.http_protocol_class = http_peer.peer_aware(config.http_protocol_class)
    server = _Embedded(config)
    sock = _bind(cfg.host, cfg.http.port or 0)
    port = sock.getsockname()[1]
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # raises what uvicorn raised
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"{'https' if tls_ctx else 'http'}://{host}:{port}"
    log.info("HTTP (OpenAI-compatible, %s) on %s", "TLS" if tls_ctx else "PLAINTEXT", url)
    return HttpListener(server, task, port, url, tls_ctx)
