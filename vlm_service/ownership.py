"""Request ownership (DESIGN.md, reliability 15): only the identity that started a request may abort it or learn that
it is in flight. Transport-neutral: the gRPC servicer and the HTTP app both pass the client certificate's identity
(one function, identity_from_certificate, so a certificate is one owner on both) or an API key's name; both call
`key` / `claim` / `release` / `abortable`.

Request ids are namespaced per identity: the engine sees `key(identity, id)`, so two identities may use the same id at
once (no ALREADY_EXISTS leak across identities) and an Abort can only name the caller's own requests. The anonymous
identity (plaintext, a UDS, TLS without client certificates) keeps the raw id, as before. Operator identities
(`--operator-identity`) may abort anyone's request by its id.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

_SEP = "|"  # not in the request-id character set (server/convert.py), so namespaced and raw ids never collide


@dataclass(frozen=True)
class Identity:
    """Who sent a request: `name` is the stable key ("" = anonymous); `aliases` are every name the credential
    carries (certificate subject, common name, SANs), which an operator list may match."""

    name: str = ""
    aliases: frozenset[str] = field(default_factory=frozenset)

    @property
    def anonymous(self) -> bool:
        return not self.name


ANONYMOUS = Identity()


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]] | None) -> Identity:
    """The identity of a gRPC peer from `context.auth_context()`: its verified client certificate (mTLS; gRPC hands
    it over as `x509_pem_cert`), else anonymous. Derived by identity_from_certificate, as on HTTP."""
    pem = list((auth or {}).get("x509_pem_cert", ()))
    if not pem:
        return ANONYMOUS
    return identity_from_certificate(ssl.PEM_cert_to_DER_cert(pem[0].decode("ascii", "replace")))


# OpenSSL's short names where cryptography's RFC 4514 writer would print a dotted OID
_ATTR_NAMES = {"1.2.840.113549.1.9.1": "emailAddress", "2.5.4.5": "serialNumber", "2.5.4.4": "SN",
               "2.5.4.42": "GN", "2.5.4.12": "title", "2.5.4.43": "initials", "2.5.4.65": "pseudonym"}


@functools.lru_cache(maxsize=1024)
def identity_from_certificate(der: bytes | None) -> Identity:
    """The identity of a verified client certificate (DER), the same on every transport (gRPC and HTTP both call
    this, so one certificate is one owner): name = the subject as an RFC 4514 string (most specific part first,
    e.g. "CN=alice,O=acme"; "SAN:<first SAN>" when the subject is empty); aliases = name, the common names and the
    SANs (DNS, e-mail, URI, IP), which --operator-identity may match. None or b"" = anonymous."""
    if not der:
        return ANONYMOUS
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    overrides = {x509.ObjectIdentifier(oid): short for oid, short in _ATTR_NAMES.items()}
    subject = cert.subject.rfc4514_string(overrides)
    common = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    sans = _san_values(cert)
    name = subject or (f"SAN:{sans[0]}" if sans else "")
    if not name:
        return ANONYMOUS
    return Identity(name=name, aliases=frozenset([name, *common, *sans]))


def _san_values(cert) -> list[str]:
    """The certificate's DNS, e-mail, URI and IP subject alternative names, in certificate order."""
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    kinds = (x509.DNSName, x509.RFC822Name, x509.UniformResourceIdentifier, x509.IPAddress)
    return [str(n.value) for n in names if isinstance(n, kinds)]


def identity_from_api_key(name: str) -> Identity:
    """The identity of a caller that sent a valid API key: the key's name (an operator list may name it)."""
    return Identity(name=name, aliases=frozenset([name]))


def client_id(key: str) -> str:
    """The client's request id of an engine key (the inverse of Ownership.key)."""
    return key.rpartition(_SEP)[2]


def parse_operators(spec: str | Iterable[str]) -> frozenset[str]:
    """--operator-identity values: a comma-separated string or a list of them; blanks dropped."""
    items = [spec] if isinstance(spec, str) else list(spec)
    return frozenset(part.strip() for item in items for part in item.split(",") if part.strip())


class Ownership:
    """identity -> its in-flight request ids (thread-safe; one per server)."""

    def __init__(self, operators: Iterable[str] = ()):
        self.operators = parse_operators(operators)
        self._lock = threading.Lock()
        self._owners: dict[str, dict[str, int]] = defaultdict(dict)  # request id -> {identity name: open calls}

    @staticmethod
    def key(identity: Identity, request_id: str) -> str:
        """The engine's id of `request_id` sent by `identity` (raw for anonymous)."""
        if identity.anonymous:
            return request_id
        return hashlib.sha256(identity.name.encode()).hexdigest()[:16] + _SEP + request_id

    def is_operator(self, identity: Identity) -> bool:
        return not identity.anonymous and not self.operators.isdisjoint(identity.aliases)

    def claim(self, identity: Identity, request_id: str) -> str:
        """Note a call for `request_id` by `identity` (pair with `release`); returns its engine key."""
        with self._lock:
            calls = self._owners[request_id]
            calls[identity.name] = calls.get(identity.name, 0) + 1
        return self.key(identity, request_id)

    def release(self, identity: Identity, request_id: str) -> None:
        with self._lock:
            calls = self._owners.get(request_id, {})
            if calls.get(identity.name, 0) > 1:
                calls[identity.name] -= 1
            else:
                calls.pop(identity.name, None)
            if not calls:
                self._owners.pop(request_id, None)

    def abortable(self, identity: Identity, request_id: str) -> list[str]:
        """Engine keys that `identity` may abort for `request_id`: its own; an operator's also everyone's."""
        own = self.key(identity, request_id)
        if not self.is_operator(identity):
            return [own]
        with self._lock:
            names = list(self._owners.get(request_id, {}))
        others = [self.key(Identity(name=n), request_id) for n in names]
        return [own] + [k for k in others if k != own]

    def in_flight(self) -> int:
        """Distinct request ids with an open call (0 when idle; for leak checks)."""
        with self._lock:
            return len(self._owners)
