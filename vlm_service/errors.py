"""Errors a user can cause. The server maps each class to one gRPC status code (server/convert.py)."""

from __future__ import annotations

INTERNAL_MESSAGE = "internal error; the server log has the details"  # what a client sees of an unexpected failure


class ServiceError(Exception):
    """Base of every user-caused error; `field` names the request field at fault, when there is one.

    `code` is the transport-neutral status name (the gRPC code's name); each transport maps it (server/convert.py,
    server/http_convert.py), and the metrics and the request log use it as it is.
    """

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class InvalidInput(ServiceError):
    """Bad request content: malformed image, bad sampling values, prompt over context (→ INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class InvalidImage(InvalidInput):
    """An image that cannot be decoded or is outside the limits (→ INVALID_ARGUMENT)."""


class DuplicateRequest(ServiceError):
    """A request id that is still in flight (→ ALREADY_EXISTS)."""

    code = "ALREADY_EXISTS"


class Overloaded(ServiceError):
    """Admission refused: queue or token limits reached (→ RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class ShuttingDown(ServiceError):
    """The server is draining and takes no new work (→ UNAVAILABLE)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    """The server-side deadline passed before the request finished (→ DEADLINE_EXCEEDED; HTTP 504)."""

    code = "DEADLINE_EXCEEDED"


class Unauthenticated(ServiceError):
    """No or an unknown API key (→ UNAUTHENTICATED; HTTP 401)."""

    code = "UNAUTHENTICATED"


class NotFound(ServiceError):
    """An unknown model name or route (→ NOT_FOUND; HTTP 404)."""

    code = "NOT_FOUND"


class TooLarge(ServiceError):
    """Request content over a size limit: a video's bytes, a request body over the size cap (→ RESOURCE_EXHAUSTED,
    not retryable as is, as gRPC's receive cap; HTTP 413)."""

    code = "RESOURCE_EXHAUSTED"


class InternalError(ServiceError):
    """Something failed inside the server; the client gets a generic message, the log keeps the detail
    (→ INTERNAL; HTTP 500)."""

    code = "INTERNAL"


class ModelLoadError(Exception):
    """A checkpoint that cannot be loaded; the message names the file and tensor at fault."""
