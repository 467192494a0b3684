"""Server and channel credentials: TLS by default, mTLS with a client CA, certificate files reloaded on change.

Policy (documented in `vlm-service serve --help`):
- TCP: TLS always, unless --insecure (plaintext, logged as a warning). With no --tls-cert/--tls-key a local dev CA and a
  localhost certificate are made once in state_dir/tls (keys 0600) and reused; clients trust state_dir/tls/ca.crt.
- UDS: plaintext by default; the socket's file mode 0600 is the access control (a sidecar next to its app). Give
  --tls-cert/--tls-key (or --tls-client-ca) to run TLS on the socket too.
- Certificate files replaced on disk are served to NEW connections without a restart (the fetcher below).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from vlm_service.config import ServerConfig
from vlm_service.server.keypair import KeyPair, ensure_private_dir  # noqa: F401  (app.py, http_serve.py use both here)

log = logging.getLogger(__name__)


def _stamp(paths: list[Path]) -> tuple:
    """What tells us a file changed: (mtime_ns, size, inode) of each path."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class ReloadingCertificates:
    """Fetcher for grpc.dynamic_ssl_server_credentials: returns a new configuration when a file changed.

    grpc calls it on each new handshake; a half-written pair (key and cert not matching yet) is caught by grpc and the
    old configuration stays in use.
    """

    def __init__(self, pair: KeyPair, client_ca: Path | None):
        self._pair = pair
        self._client_ca = client_ca
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self.reloads = 0

    def _paths(self) -> list[Path]:
        return [self._pair.cert, self._pair.key] + ([self._client_ca] if self._client_ca else [])

    def _current_stamp(self) -> tuple:
        return _stamp(self._paths())

    def configuration(self):
        """The certificate configuration from the files as they are now."""
        roots = self._client_ca.read_bytes() if self._client_ca else None
        return grpc.ssl_server_certificate_configuration([self._pair.read()], root_certificates=roots)

    def __call__(self):
        try:
            with self._lock:
                stamp = self._current_stamp()
                if stamp == self._stamp:
                    return None
                config = self.configuration()
                self._stamp = stamp
                self.reloads += 1
            log.info("TLS certificate files changed; new connections use the new ones")
            return config
        except OSError as exc:  # mid-rotation: a file briefly missing; keep serving the old pair
            log.warning("TLS certificate reload skipped: %s", exc)
            return None


def server_keypair(cfg: ServerConfig) -> tuple[KeyPair, Path | None]:
    """(server key pair, dev CA cert or None): the given files, or the dev PKI under state_dir/tls."""
    tls = cfg.tls
    if tls.cert is not None:
        return KeyPair(Path(tls.cert), Path(tls.key)), None
    from vlm_service.server.pki import ensure_dev_pki  # lazy: `cryptography` is needed only to make certificates

    ca, server = ensure_dev_pki(Path(cfg.state_dir) / "tls")
    return server, ca.cert


def uses_tls(cfg: ServerConfig, on_uds: bool) -> bool:
    """Whether a listener gets TLS under the policy in this module's docstring."""
    if cfg.tls.insecure:
        return False
    if on_uds:
        return cfg.tls.cert is not None or cfg.tls.client_ca is not None
    return True


def server_credentials(cfg: ServerConfig) -> tuple[grpc.ServerCredentials, ReloadingCertificates]:
    """Reloading TLS credentials (mTLS when cfg.tls.client_ca is set)."""
    pair, dev_ca = server_keypair(cfg)
    if dev_ca is not None:
        log.info("TLS with the local dev CA %s (clients: --ca %s)", dev_ca, dev_ca)
    client_ca = Path(cfg.tls.client_ca) if cfg.tls.client_ca else None
    fetcher = ReloadingCertificates(pair, client_ca)
    creds = grpc.dynamic_ssl_server_credentials(fetcher.configuration(), fetcher,
                                                require_client_authentication=client_ca is not None)
    return creds, fetcher


def channel_credentials(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Client TLS credentials trusting `ca` (system roots when None), with a client certificate for mTLS."""
    roots = Path(ca).read_bytes() if ca else None
    chain = Path(cert).read_bytes() if cert else None
    private = Path(key).read_bytes() if key else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=private, certificate_chain=chain)
