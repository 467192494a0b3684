"""TLS policy: dev CA made once (keys 0600) and trusted by the client; mTLS refuses strangers; rotated files reach new
connections; UDS is plaintext and 0600."""

from __future__ import annotations

import os
import shutil
import stat

import grpc
import pytest
from cryptography import x509
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.server.fakes import fake_runtime
from vlm_service.client import Client
from vlm_service.config import Config, ServerConfig, TLSConfig
from vlm_service.server.pki import ensure_dev_pki, make_leaf, LOCAL_NAMES
from tests.server_harness import make_test_pki, running_server
from vlm_service.server.tls import channel_credentials


def _serve(tmp_path, tls: TLSConfig, **server):
    cfg = Config(server=ServerConfig(port=0, state_dir=tmp_path / "state", tls=tls, drain_timeout_s=5, **server))
    rt = fake_runtime()
    return running_server(cfg, load_runtime=lambda c: rt, warmup=False)


def _info(target, creds, timeout=3.0):
    with Client(target, channel_credentials=creds) if creds else Client(target, insecure=True) as client:
        return client.info(timeout=timeout)


def test_dev_pki_is_made_once_with_private_keys(tmp_path):
    ca, server = ensure_dev_pki(tmp_path / "tls")
    assert stat.S_IMODE(os.stat(ca.key).st_mode) == 0o600 and stat.S_IMODE(os.stat(server.key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    before = ca.cert.read_bytes()
    ensure_dev_pki(tmp_path / "tls")
    assert ca.cert.read_bytes() == before  # reused, not remade


def test_default_tls_with_dev_ca_and_reflection(tmp_path):
    with _serve(tmp_path, TLSConfig()) as srv:
        assert _info(srv.target, srv.credentials).model_id == "fake"
        with Client(srv.target, state_dir=tmp_path / "state") as client:  # the client trusts the dev CA by default
            assert client.info().model_id == "fake"
        with pytest.raises(grpc.RpcError):  # plaintext against TLS
            _info(srv.target, None, timeout=1.0)
        with srv.channel() as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert {"vlm.v1.VisionLanguageService", "grpc.health.v1.Health"} <= names


def test_mtls_refuses_missing_and_foreign_client_certs(tmp_path):
    pki = make_test_pki(tmp_path / "pki")
    tls = TLSConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)
    with _serve(tmp_path, tls) as srv:
        good = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
        assert _info(srv.target, good).model_id == "fake"
        for creds in (channel_credentials(pki.ca.cert),
                      channel_credentials(pki.ca.cert, pki.other_client.cert, pki.other_client.key)):
            with pytest.raises(grpc.RpcError) as err:
                _info(srv.target, creds, timeout=2.0)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_rotated_certificate_is_served_to_new_connections(tmp_path):
    pki = make_test_pki(tmp_path / "pki")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.server.cert, live / "server.crt")
    shutil.copy(pki.server.key, live / "server.key")
    with _serve(tmp_path, TLSConfig(cert=live / "server.crt", key=live / "server.key")) as srv:
        assert _info(srv.target, channel_credentials(pki.ca.cert)).model_id == "fake"
        rotated = make_leaf(pki.other_ca, tmp_path / "rotated", "localhost", LOCAL_NAMES)  # other CA: visible change
        os.replace(rotated.key, live / "server.key")
        os.replace(rotated.cert, live / "server.crt")
        assert _info(srv.target, channel_credentials(pki.other_ca.cert)).model_id == "fake"
        with pytest.raises(grpc.RpcError):
            _info(srv.target, channel_credentials(pki.ca.cert), timeout=2.0)
        assert srv.server.cert_fetcher.reloads >= 1


def test_uds_is_plaintext_and_private(tmp_path):
    sock = tmp_path / "s" / "vlm.sock"
    with _serve(tmp_path, TLSConfig(), uds=sock, tcp=False) as srv:
        assert srv.target == f"unix:{sock.resolve()}"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert _info(srv.target, None).model_id == "fake"
