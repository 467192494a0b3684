"""The TLS peer of an HTTP connection, for the app (mTLS identity on HTTP as on gRPC).

uvicorn's HTTP/1.1 protocols (h11, httptools) put no TLS information in the ASGI scope, and an ASGI app cannot reach
the transport. `peer_aware` subclasses the protocol uvicorn chose: when a connection is made (after the handshake)
it reads the verified client certificate from the transport's SSL object and adds the ASGI TLS extension
(scope["extensions"]["tls"], https://asgi.readthedocs.io/en/latest/specs/tls.html) to every request on that
connection. `identity_of(scope)` turns it into the caller's identity with ownership.identity_from_certificate, the
function the gRPC servicer uses for its auth context, so a certificate is the same owner on both transports.
"""

from __future__ import annotations

import ssl

from vlm_service.ownership import ANONYMOUS, Identity, identity_from_certificate

# the IANA TLS version numbers the extension wants (ssl gives names)
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(transport) -> dict | None:
    """The ASGI TLS extension of a connection (None when it is not TLS). client_cert_chain holds the verified leaf
    only (the ssl module does not expose the rest of the chain); cipher_suite is None (ssl gives no IANA number)."""
    ssl_obj = transport.get_extra_info("ssl_object")
    if ssl_obj is None:
        return None
    der = ssl_obj.getpeercert(binary_form=True)
    identity = identity_from_certificate(der)
    return {"server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": identity.name if der else None,
            "client_cert_error": None,  # unverified certificates never get here: the handshake refused them
            "tls_version": _TLS_VERSIONS.get(ssl_obj.version() or ""),
            "cipher_suite": None}


def identity_of(scope) -> Identity:
    """The caller's identity from the request's TLS extension: its client certificate's, else anonymous."""
    ext = (scope.get("extensions") or {}).get("tls") or {}
    chain = ext.get("client_cert_chain") or []
    return identity_from_certificate(ssl.PEM_cert_to_DER_cert(chain[0])) if chain else ANONYMOUS


class _WithTLS:
    """ASGI middleware of one connection: adds its TLS extension to each request's scope."""

    def __init__(self, app, extension: dict):
        self.app, self.extension = app, extension

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.extension}
        return await self.app(scope, receive, send)


def peer_aware(protocol_class: type) -> type:
    """A subclass of a uvicorn HTTP protocol class whose requests carry the connection's TLS extension. Both of
    uvicorn's HTTP/1.1 protocols call `self.app` per request, so wrapping it per connection is enough."""

    class PeerAwareProtocol(protocol_class):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            extension = tls_extension(transport)
            if extension is not None:
                self.app = _WithTLS(self.app, extension)

    PeerAwareProtocol.__qualname__ = f"PeerAware{protocol_class.__name__}"
    return PeerAwareProtocol
