"""Client text in errors and request ids, transport-neutral: the gRPC and HTTP converters and the pipeline use it.

Bounds on the strings a client sends (issue 12): each is echoed, logged or kept per request, so each is capped.
"""

from __future__ import annotations

import re

from vlm_service.errors import InvalidInput

MAX_REQUEST_ID_CHARS = 128
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._\-:/]+")  # safe in logs, metrics labels, URLs and file names
QUOTE_CHARS = 32  # errors quote at most this much of what was sent


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """A short, repr-escaped prefix of client text for error messages ('abc...' (1048576 chars))."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} chars)"


def check_request_id(request_id: str) -> str:
    """A client's request id: at most MAX_REQUEST_ID_CHARS of letters, digits and . _ - : / (empty = generate)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidInput(f"request_id: at most {MAX_REQUEST_ID_CHARS} characters, got {len(request_id)} "
                           f"({quote(request_id)})", field="request_id")
    if request_id and REQUEST_ID_RE.fullmatch(request_id) is None:
        raise InvalidInput(f"request_id: only letters, digits and . _ - : / are allowed, got {quote(request_id)}",
                           field="request_id")
    return request_id
