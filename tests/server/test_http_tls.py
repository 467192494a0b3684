"""TLS of the HTTP front door, from the same certificate files as gRPC: mTLS refuses clients without a certificate
or with one from another CA; rotated certificate files are served to new connections without a restart; with no
files, the dev CA's certificate (as on gRPC)."""

from __future__ import annotations

import shutil
import ssl

import httpx
import pytest

pytest.importorskip("cryptography")

from tests.server.http_fakes import http_cfg, http_runtime  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.server.pki import LOCAL_NAMES, make_leaf  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def _ctx(ca, pair=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def _post(url: str, ctx: ssl.SSLContext) -> int:
    with httpx.Client(verify=ctx, timeout=10) as c:  # a fresh connection each time
        return c.post(url + "/v1/chat/completions", json=CHAT).status_code


@pytest.fixture
def pki(tmp_path):
    pki = make_test_pki(tmp_path / "pki")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.server.cert, live / "server.crt")
    shutil.copy(pki.server.key, live / "server.key")
    return pki, live


def test_mtls_and_rotation(tmp_path, pki):
    pki, live = pki
    tls = TLSConfig(cert=live / "server.crt", key=live / "server.key", client_ca=pki.ca.cert)
    rt = http_runtime()
    with running_server(http_cfg(tmp_path, tls=tls), load_runtime=lambda c: rt, warmup=False,
                        credentials=None) as srv:
        url = srv.server.http.url
        assert url.startswith("https://")
        assert _post(url, _ctx(pki.ca.cert, pki.client)) == 200
        for ctx in (_ctx(pki.ca.cert), _ctx(pki.ca.cert, pki.other_client)):  # no certificate / another CA's
            with pytest.raises(httpx.TransportError):
                _post(url, ctx)
        rotated = make_leaf(pki.other_ca, tmp_path / "rotated", "localhost", LOCAL_NAMES)
        shutil.copy(rotated.key, live / "server.key")
        shutil.copy(rotated.cert, live / "server.crt")
        assert _post(url, _ctx(pki.other_ca.cert, pki.client)) == 200, "new connections get the new certificate"
        with pytest.raises(httpx.ConnectError):  # and it is no longer the old CA's
            _post(url, _ctx(pki.ca.cert, pki.client))
        assert srv.server.http.tls.reloads == 1


def test_dev_ca_by_default(tmp_path):
    rt = http_runtime()
    with running_server(http_cfg(tmp_path, tls=TLSConfig()), load_runtime=lambda c: rt, warmup=False) as srv:
        assert _post(srv.server.http.url, _ctx(tmp_path / "tls" / "ca.crt")) == 200
