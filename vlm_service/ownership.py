"""Request ownership (DESIGN.md, reliability 15): only the identity that started a request may abort it or learn that
it is in flight. Transport-neutral: the gRPC servicer passes the client certificate's identity, the HTTP app passes
the same (or an API key's id); both call `key` / `claim` / `release` / `abortable`.

Request ids are namespaced per identity: the engine sees `key(identity, id)`, so two identities may use the same id at
once (no ALREADY_EXISTS leak across identities) and an Abort can only name the caller's own requests. The anonymous
identity (plaintext, a UDS, TLS without client certificates) keeps the raw id, as before. Operator identities
(`--operator-identity`) may abort anyone's request by its id.
"""

from __future__ import annotations

import hashlib
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
    """The identity of a gRPC peer from `context.auth_context()`: its verified client certificate (mTLS), else
    anonymous. name = the certificate subject (or CN=<common name>), aliases = subject, CN and SANs."""
    auth = auth or {}

    def values(key: str) -> list[str]:
        return [v.decode("utf-8", "replace") for v in auth.get(key, ())]

    subject, common = values("x509_subject"), values("x509_common_name")
    if not subject and not common:
        return ANONYMOUS
    name = subject[0] if subject else f"CN={common[0]}"
    return Identity(name=name, aliases=frozenset([name, *subject, *common, *values("x509_subject_alternative_name")]))


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
