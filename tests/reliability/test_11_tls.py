"""11. TLS: no client cert / wrong CA refused under mTLS; rotated certificate files are served to new connections
without a restart."""

from __future__ import annotations

import os
import shutil

import grpc
import pytest

pytest.importorskip("cryptography")  # makes the throwaway PKI

from reliability_helpers import rel_config  # noqa: E402
from vlm_service.client import Client  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.server.pki import LOCAL_NAMES, make_leaf  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402


@pytest.fixture(scope="module")
def mtls(state_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    pki = make_test_pki(folder)
    live = folder / "live"
    live.mkdir()
    shutil.copy(pki.server.cert, live / "server.crt")
    shutil.copy(pki.server.key, live / "server.key")
    tls = TLSConfig(cert=live / "server.crt", key=live / "server.key", client_ca=pki.ca.cert)
    good = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
    with running_server(rel_config(state_dir, tls=tls), credentials=good, warmup=False) as srv:
        yield srv, pki, live, good


def _info(target: str, creds, server_name: str | None = None):
    with Client(target, channel_credentials=creds, server_name=server_name) as client:
        return client.info(timeout=3.0)


def test_good_client_certificate_is_served(mtls):
    srv, _, _, good = mtls
    assert _info(srv.target, good).model_id == "demo"


@pytest.mark.parametrize("who", ["no_client_cert", "client_of_other_ca", "server_of_other_ca"])
def test_mtls_refuses(mtls, who):
    srv, pki, _, _ = mtls
    creds = {"no_client_cert": channel_credentials(pki.ca.cert),
             "client_of_other_ca": channel_credentials(pki.ca.cert, pki.other_client.cert, pki.other_client.key),
             # the client trusts another CA: it must refuse the server's certificate
             "server_of_other_ca": channel_credentials(pki.other_ca.cert, pki.client.cert, pki.client.key)}[who]
    with pytest.raises(grpc.RpcError) as err:
        _info(srv.target, creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rotated_certificate_reaches_new_connections(mtls, tmp_path):
    srv, pki, live, good = mtls
    with pytest.raises(grpc.RpcError):  # today's certificate does not name rotated.test
        _info(srv.target, good, server_name="rotated.test")
    new = make_leaf(pki.ca, tmp_path / "rotated", "rotated", LOCAL_NAMES + ("rotated.test",))
    os.replace(new.key, live / "server.key")
    os.replace(new.cert, live / "server.crt")
    assert _info(srv.target, good, server_name="rotated.test").model_id == "demo"
    assert _info(srv.target, good).model_id == "demo"  # localhost is still named by the new certificate
