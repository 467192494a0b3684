"""Errors a user can cause. The server maps each class to one gRPC status code (server/convert.py)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every user-caused error; `field` names the request field at fault, when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class InvalidInput(ServiceError):
    """Bad request content: malformed image, bad sampling values, prompt over context (→ INVALID_ARGUMENT)."""


class InvalidImage(InvalidInput):
    """An image that cannot be decoded or is outside the limits (→ INVALID_ARGUMENT)."""


class TooLarge(ServiceError):
    """Request content over a size limit, e.g. a video's bytes (→ RESOURCE_EXHAUSTED, not retryable as is)."""


class DuplicateRequest(ServiceError):
    """A request id that is still in flight (→ ALREADY_EXISTS)."""


class Overloaded(ServiceError):
    """Admission refused: queue or token limits reached (→ RESOURCE_EXHAUSTED)."""


class ShuttingDown(ServiceError):
    """The server is draining and takes no new work (→ UNAVAILABLE)."""


class InternalError(ServiceError):
    """Something failed inside the server; the client gets a generic message, the log keeps the detail
    (→ INTERNAL)."""


class ModelLoadError(Exception):
    """A checkpoint that cannot be loaded; the message names the file and tensor at fault."""
