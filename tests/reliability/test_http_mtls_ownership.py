"""15 across transports: under mTLS the HTTP front door knows the caller by its client certificate, exactly as gRPC
does (one identity function), so a request belongs to its certificate on both transports: another certificate can
neither abort it (gRPC Abort) nor collide with its id (HTTP or gRPC); the same certificate collides with its own id
on the other transport, can abort its HTTP request over gRPC, and is named in the request log. A client without a
certificate is refused at the TLS handshake, before any HTTP. Real server, demo model, TLS made by the test."""

from __future__ import annotations

import logging
import socket
import ssl
import threading

import grpc
import httpx
import pytest

pytest.importorskip("cryptography")

from http_helpers import chat_body, events  # noqa: E402
from reliability_helpers import collect, rel_config, wait_until  # noqa: E402
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc  # noqa: E402
from vlm_service.client import build_request  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.server.pki import make_leaf  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402

LONG = {"max_tokens": 900, "min_tokens": 900, "ignore_eos": True}
WHO = ("alice", "bob")


@pytest.fixture(scope="module")
def mtls(state_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki-http-own")
    pki = make_test_pki(folder)
    certs = {who: make_leaf(pki.ca, folder / who, who, client=True) for who in WHO}
    tls = TLSConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)
    with running_server(rel_config(state_dir, tls=tls, http_port=0),
                        credentials=channel_credentials(pki.ca.cert, certs["alice"].cert, certs["alice"].key),
                        warmup=False) as srv:
        channels = {w: srv.channel(channel_credentials(pki.ca.cert, c.cert, c.key)) for w, c in certs.items()}
        stubs = {w: vlm_pb2_grpc.VisionLanguageServiceStub(ch) for w, ch in channels.items()}
        https = {}
        for w, c in certs.items():
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
            ctx.load_cert_chain(c.cert, c.key)
            https[w] = httpx.Client(base_url=srv.server.http.url, verify=ctx, timeout=120)
        yield srv, stubs, https, pki
        for http in https.values():
            http.close()
        for ch in channels.values():
            ch.close()


class _HttpStream:
    """A long streamed chat read on a thread; `first` is set at the first content token."""

    def __init__(self, http: httpx.Client, request_id: str):
        self.first, self.finish, self.error = threading.Event(), None, None
        self._http, self._rid = http, request_id
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.first.wait(60) and self.error is None, self.error

    def _read(self):
        body = chat_body("go on", stream=True, **LONG)
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body,
                                   headers={"x-request-id": self._rid}) as resp:
                if resp.status_code != 200:
                    self.error = resp.read()
                for event in events(resp):
                    if event != "[DONE]" and event["choices"]:
                        self.first.set()
                        self.finish = event["choices"][0]["finish_reason"] or self.finish
        except httpx.HTTPError as exc:
            self.error = exc
        self.first.set()

    def wait(self):
        self._thread.join(120)
        return self.finish


def _abort(stub, request_id: str) -> bool:
    return stub.Abort(vlm_pb2.AbortRequest(request_id=request_id), timeout=10).found


def _chat(http: httpx.Client, request_id: str) -> httpx.Response:
    return http.post("/v1/chat/completions", json=chat_body("hi", max_tokens=2), headers={"x-request-id": request_id})


def _log_lines(caplog, request_id: str) -> set[tuple[str, str, str]]:
    """(transport, identity, status) of each request-log line of `request_id`."""
    return {("http" if r.fields["peer"].startswith("http") else "grpc", r.fields["identity"], r.fields["status"])
            for r in caplog.records if r.name == "vlm_service.requests" and r.fields["request_id"] == request_id}


def test_an_http_request_belongs_to_its_certificate_on_both_transports(mtls, caplog):
    srv, stubs, https, _ = mtls
    caplog.set_level(logging.INFO, logger="vlm_service.requests")
    stream = _HttpStream(https["alice"], "h-own")
    assert _abort(stubs["bob"], "h-own") is False  # another certificate: "not found", over gRPC
    assert _chat(https["bob"], "h-own").status_code == 200  # bob's own "h-own" simply runs (namespaced ids)
    tokens, complete = collect(stubs["bob"].Generate(build_request("mine", request_id="h-own", max_tokens=2)))
    assert tokens and complete.finish_reason == vlm_pb2.LENGTH
    dup = _chat(https["alice"], "h-own")  # alice learns about her own duplicate on HTTP ...
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "already_exists", dup.text
    with pytest.raises(grpc.RpcError) as err:  # ... and on gRPC: the same owner on both transports
        collect(stubs["alice"].Generate(build_request("again", request_id="h-own", max_tokens=1)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert stream.finish is None
    assert _abort(stubs["alice"], "h-own") is True  # her gRPC Abort reaches her HTTP request
    assert stream.wait() == "abort"
    lines = {("http", "CN=bob", "OK"), ("grpc", "CN=bob", "OK"), ("http", "CN=alice", "ALREADY_EXISTS"),
             ("grpc", "CN=alice", "ALREADY_EXISTS"), ("http", "CN=alice", "ABORTED")}  # the last: the aborted stream
    assert wait_until(lambda: _log_lines(caplog, "h-own") == lines), _log_lines(caplog, "h-own")


def test_a_grpc_request_collides_only_with_its_own_certificate_over_http(mtls):
    srv, stubs, https, _ = mtls
    call = stubs["alice"].Generate(build_request("go on", request_id="g-own", **LONG), timeout=120)
    next(call)  # running
    try:
        assert _chat(https["bob"], "g-own").status_code == 200
        assert _chat(https["alice"], "g-own").status_code == 409
    finally:
        call.cancel()
    assert wait_until(lambda: srv.server.pipeline.owners.in_flight() == 0)


def _raw_get_health(port: int, ctx: ssl.SSLContext) -> bytes:
    """GET /health (open to anyone who gets past TLS) on a fresh connection: the reply's first bytes, b"" when the
    server closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            return tls.recv(1024)


def test_a_client_without_a_certificate_is_refused_at_the_handshake(mtls):
    srv, _, _, pki = mtls
    port, with_cert = srv.server.http.port, ssl.create_default_context(cafile=str(pki.ca.cert))
    with_cert.load_cert_chain(pki.client.cert, pki.client.key)
    assert _raw_get_health(port, with_cert).startswith(b"HTTP/1.1 200")  # the same call, with a certificate
    tls12 = ssl.create_default_context(cafile=str(pki.ca.cert))  # trusts the server, offers no certificate
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2  # the client certificate is part of the TLS 1.2 handshake itself
    with pytest.raises(ssl.SSLError):
        _raw_get_health(port, tls12)
    tls13 = ssl.create_default_context(cafile=str(pki.ca.cert))
    try:  # TLS 1.3: the client's handshake ends first; the server then refuses it and closes, before any HTTP
        got = _raw_get_health(port, tls13)
    except (ssl.SSLError, ConnectionError):
        got = b""
    assert got == b""
