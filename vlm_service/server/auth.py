"""API keys, checked on both transports: `Authorization: Bearer KEY` on HTTP, `authorization` metadata on gRPC.

A key has a name, and the name is the caller's identity (request ownership in the pipeline). Keys come from
--api-key (repeatable; "NAME:KEY", or "KEY" alone, named key-<first 8 hex of its sha256>) and --api-keys-file (one
"NAME KEY" or "KEY" per line, # comments). No keys configured = no check. Health endpoints never ask for a key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Iterable

from vlm_service import errors

_SCHEME = "bearer"


def _named(entry: str, sep: str | None) -> tuple[str, str]:
    """(name, key) of one configured entry."""
    name, _, key = entry.strip().partition(sep) if sep else ("", "", entry.strip())
    if sep and not key:
        name, key = "", name
    key = key.strip()
    return (name.strip() or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]), key


def _file_entries(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(_named(line, " " if " " in line else None))
    return out


class ApiKeys:
    """The accepted keys; `identify` maps an Authorization value to the key's name or raises Unauthenticated."""

    def __init__(self, entries: Iterable[tuple[str, str]]):
        self._keys = [(name, key.encode()) for name, key in entries if key]
        if not self._keys:
            raise ValueError("API keys were asked for but none is configured (empty --api-keys-file?)")

    @classmethod
    def from_config(cls, keys: Iterable[str], keys_file: Path | None) -> "ApiKeys | None":
        """None when no key is configured (no check)."""
        entries = [_named(k, ":" if ":" in k else None) for k in keys]
        if keys_file is not None:
            entries += _file_entries(keys_file)
        return cls(entries) if entries or keys_file is not None else None

    def identify(self, authorization: str | None) -> str:
        """The name of the key in an `Authorization: Bearer KEY` value (compared in constant time)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != _SCHEME or not token.strip():
            raise errors.Unauthenticated("an API key is required: send 'Authorization: Bearer <key>'")
        given, found = token.strip().encode(), None
        for name, key in self._keys:  # every key is compared, so timing does not tell which prefix matched
            if hmac.compare_digest(given, key):
                found = name
        if found is None:
            raise errors.Unauthenticated("the API key is not valid")
        return found


def grpc_metadata_value(metadata, name: str = "authorization") -> str | None:
    """The first value of a metadata key in grpc invocation metadata (keys are lower case on the wire)."""
    for key, value in metadata or ():
        if key == name:
            return value
    return None
