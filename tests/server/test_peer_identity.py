"""One client certificate is one identity on both transports: the identity gRPC derives from its auth context
(ownership.identity_from_auth_context) equals the one the HTTP front door derives from the TLS transport
(http_peer.tls_extension -> identity_of), over real handshakes with a certificate made here (multi-part subject
with characters RFC 4514 escapes, non-ASCII, SANs of four kinds; and one with an empty subject)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from concurrent import futures

import grpc
import pytest

pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from vlm_service.ownership import ANONYMOUS, identity_from_auth_context  # noqa: E402
from vlm_service.server.http_peer import identity_of, tls_extension  # noqa: E402
from vlm_service.server.pki import KeyPair  # noqa: E402
from tests.server_harness import make_test_pki  # noqa: E402

SUBJECT = [(NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, "Acme, Inc+x"),
           (NameOID.ORGANIZATIONAL_UNIT_NAME, "ml"), (NameOID.COMMON_NAME, "worker é 1"),
           (NameOID.EMAIL_ADDRESS, "a@b.c")]
SANS = [x509.DNSName("w1.example"), x509.RFC822Name("x@y.z"), x509.UniformResourceIdentifier("spiffe://t/w1"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]


def _client_cert(ca: KeyPair, out, subject, sans) -> KeyPair:
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    issuer = x509.load_pem_x509_certificate(ca.cert.read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(o, v) for o, v in subject]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectAlternativeName(sans), critical=not subject))
    pair = KeyPair(out.with_suffix(".crt"), out.with_suffix(".key"))
    pair.cert.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pair


def _grpc_identity(pki, client: KeyPair):
    """The identity the gRPC servicer would see: a real mTLS call to a one-method server."""
    seen = {}

    def handler(request, context):
        seen["identity"] = identity_from_auth_context(context.auth_context())
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(1))
    method = grpc.unary_unary_rpc_method_handler(handler)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Peer", {"Who": method})])
    creds = grpc.ssl_server_credentials([(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
                                        root_certificates=pki.ca.cert.read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        chan_creds = grpc.ssl_channel_credentials(pki.ca.cert.read_bytes(), client.key.read_bytes(),
                                                  client.cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", chan_creds) as ch:
            ch.unary_unary("/t.Peer/Who")(b"", timeout=10)
    finally:
        server.stop(None)
    return seen["identity"]


def _http_identity(pki, client: KeyPair | None):
    """The identity the HTTP app would see: an asyncio TLS server (as uvicorn's) reading the transport."""
    async def run():
        seen = asyncio.get_running_loop().create_future()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                seen.set_result(identity_of({"extensions": {"tls": tls_extension(transport)}}))

        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(pki.server.cert, pki.server.key)
        server_ctx.load_verify_locations(cafile=str(pki.ca.cert))
        server_ctx.verify_mode = ssl.CERT_REQUIRED if client else ssl.CERT_NONE
        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0, ssl=server_ctx)
        client_ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        if client:
            client_ctx.load_cert_chain(client.cert, client.key)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki-peer"))


def test_a_certificate_is_the_same_identity_on_grpc_and_http(pki, tmp_path):
    cert = _client_cert(pki.ca, tmp_path / "w1", SUBJECT, SANS)
    over_grpc, over_http = _grpc_identity(pki, cert), _http_identity(pki, cert)
    assert over_grpc == over_http
    assert over_http.name == r"emailAddress=a@b.c,CN=worker é 1,OU=ml,O=Acme\, Inc\+x,C=DE"  # RFC 4514, leaf first
    assert {"worker é 1", "w1.example", "x@y.z", "spiffe://t/w1", "10.0.0.1"} <= over_http.aliases


def test_an_empty_subject_is_named_by_its_first_san(pki, tmp_path):
    cert = _client_cert(pki.ca, tmp_path / "spiffe", [], [x509.UniformResourceIdentifier("spiffe://t/job")])
    over_grpc, over_http = _grpc_identity(pki, cert), _http_identity(pki, cert)
    assert over_grpc == over_http and over_http.name == "SAN:spiffe://t/job" and not over_http.anonymous


def test_without_a_client_certificate_both_are_anonymous(pki):
    assert _http_identity(pki, None) is ANONYMOUS
    assert identity_from_auth_context({"transport_security_type": [b"ssl"]}) is ANONYMOUS
    assert identity_of({"type": "http"}) is ANONYMOUS


async def _whoami(scope, receive, send):
    """An ASGI app answering with the caller's identity name."""
    body = identity_of(scope).name.encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_both_uvicorn_http_protocols_carry_the_certificate(pki, tmp_path, http):
    """The protocol subclass works over either of uvicorn's HTTP/1.1 implementations (hosts without httptools get
    h11), and two requests on one kept-alive connection both carry it."""
    pytest.importorskip(http)
    uvicorn, httpx = pytest.importorskip("uvicorn"), pytest.importorskip("httpx")
    from vlm_service.server.http_peer import peer_aware
    cert = _client_cert(pki.ca, tmp_path / "w1", SUBJECT, SANS)

    async def run():
        config = uvicorn.Config(_whoami, http=http, log_level="warning", lifespan="off", host="127.0.0.1", port=0)
        config.load()
        config.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        config.ssl.load_cert_chain(pki.server.cert, pki.server.key)
        config.ssl.load_verify_locations(cafile=str(pki.ca.cert))
        config.ssl.verify_mode = ssl.CERT_REQUIRED
        config.http_protocol_class = peer_aware(config.http_protocol_class)
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(cert.cert, cert.key)
        try:
            async with httpx.AsyncClient(verify=ctx, base_url=f"https://localhost:{port}") as client:
                return [(await client.get("/")).text for _ in range(2)]
        finally:
            server.should_exit = True
            await task

    names = asyncio.run(run())
    assert names == [r"emailAddress=a@b.c,CN=worker é 1,OU=ml,O=Acme\, Inc\+x,C=DE"] * 2
