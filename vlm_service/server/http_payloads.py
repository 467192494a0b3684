"""Base64 payloads of `data:` URLs lifted out of a raw request body before it is parsed as JSON.

A 1024² PNG sent as a data URL is ~4 MB of base64 inside one JSON string. A JSON parser must scan, validate and copy
all of it into a Python str (orjson: ~3-6 ms per 4 MB on this project's hosts), which is then decoded once more.
Here the payload bytes are found in the raw body (memchr-speed `find`s), replaced by a short per-request key, and
decoded straight from the body's buffer; the JSON that is left is a few hundred bytes.

When it is safe: base64 has no `"` or `\\`, so inside a JSON string a payload with no backslash ends at the next `"`
(the string's end: an escaped quote would have a backslash). Anything else -- an escaped payload (`\\/`), a payload
under MIN_LIFT bytes -- is left in place for the parser. A lifted key that the request does not consume as a data
URL payload (e.g. a data URL quoted in a text part) makes the caller parse the original body instead
(`LiftedPayloads.all_used`), so the result never differs from a plain parse.
"""

from __future__ import annotations

import secrets

_START = b'"data:'
_BASE64 = b";base64,"
MIN_LIFT = 4096  # payloads shorter than this are not worth a key
_MAX_HEAD = 256  # bytes from "data: to ;base64, (the mime type and parameters)


class LiftedPayloads:
    """key -> the payload's bytes (a memoryview of the body), and which keys the request consumed."""

    def __init__(self):
        self.nonce = "vlm" + secrets.token_hex(8) + "-"  # unguessable: client text cannot name a key
        self.payloads: dict[str, memoryview] = {}
        self.used: set[str] = set()

    def take(self, payload: str) -> memoryview | None:
        """The lifted bytes a data URL's payload text stands for (None: the payload is the text itself)."""
        data = self.payloads.get(payload) if payload.startswith(self.nonce) else None
        if data is not None:
            self.used.add(payload)
        return data

    @property
    def all_used(self) -> bool:
        return self.used == set(self.payloads)


def lift_payloads(raw: bytes | bytearray) -> tuple[bytes | bytearray, LiftedPayloads]:
    """(the body with each long data-URL payload replaced by a key, the lifted payloads). Bodies without one come
    back unchanged (no copy)."""
    lifted = LiftedPayloads()
    view = memoryview(raw)
    pieces, copied, pos = [], 0, 0  # raw[:copied] is in pieces; the next "data: is searched from pos
    while (start := raw.find(_START, pos)) != -1:
        head = raw.find(_BASE64, start, start + _MAX_HEAD)
        if head == -1 or raw.find(b'"', start + 1, head) != -1:  # no ;base64, inside this string
            pos = start + len(_START)
            continue
        begin = head + len(_BASE64)
        end = raw.find(b'"', begin)
        if end == -1:
            break  # an unterminated string: the parser reports it
        pos = end
        if end - begin < MIN_LIFT or raw.find(b"\\", begin, end) != -1:
            continue
        key = f"{lifted.nonce}{len(lifted.payloads)}"
        lifted.payloads[key] = view[begin:end]
        pieces += (view[copied:begin], key.encode())
        copied = end
    if not lifted.payloads:
        return raw, lifted
    pieces.append(view[copied:])
    return b"".join(pieces), lifted
