"""The per-request observer of the pipeline: metrics record and the one structured log line per request (logger
`vlm_service.requests`). Transport-neutral: the gRPC and HTTP adapters both run through the pipeline, which owns it.

`RequestObserver` follows one Generate call: image count and pixels, inter-token gaps, the final status. At the end it
feeds the histograms/counters and logs `request_id, peer, identity, images, pixels, vision_pixels, prompt/completion tokens,
status, ttft_ms, e2e_ms, queue_ms, preprocess_ms`. `pixels` are the images as sent (width x height from their headers,
what the bench records), `vision_pixels` what the vision tower saw after resize. `completion_tokens` counts the tokens
streamed, so a request cut short still shows what it cost. `status` is the gRPC status, except ABORTED for a request
ended by the Abort RPC and DEADLINE_EXCEEDED when the client's own deadline passed (gRPC reports it as a cancel).
Image bytes and prompt text are never logged.
"""

from __future__ import annotations

import logging
import time
import unicodedata

from vlm_service import types
from vlm_service.metrics import Metrics, RequestRecord

request_log = logging.getLogger("vlm_service.requests")

# statuses that are the client's own doing (it left, or aborted) rather than the server refusing: not counted as rejected
_NOT_REJECTED = ("OK", "CANCELLED", "ABORTED")


def record_of(fin: types.Finished, inter_token_s: tuple[float, ...] = ()) -> RequestRecord:
    """The metrics record of a finished request (ms -> s)."""
    u, t = fin.usage, fin.timings
    return RequestRecord(finished_reason=fin.finish_reason.value, prompt_tokens=u.prompt_tokens,
                         completion_tokens=u.completion_tokens, image_tokens=u.image_tokens,
                         cached_tokens=u.cached_tokens, ttft_s=t.ttft_ms / 1e3, e2e_s=t.e2e_ms / 1e3,
                         queue_s=t.queue_ms / 1e3, preprocess_s=t.preprocess_ms / 1e3, vision_s=t.vision_ms / 1e3,
                         inter_token_s=inter_token_s)


LOG_TEXT_CHARS = 160  # a logged client string is cut here (ids are at most 128; this also bounds refused ones)


def log_safe(value: str, limit: int = LOG_TEXT_CHARS) -> str:
    """`value` cut to `limit` chars with control and line/format characters escaped (\\n, \\x1b, \\u2028) and
    backslashes doubled, so a client string can never start a new log line or drive a terminal."""
    cut = value[:limit]
    out = "".join(_escape_char(c) for c in cut)
    return out + ("..." if len(value) > limit else "")


def _escape_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp"):
        return repr(c)[1:-1] if c.isascii() else f"\\u{ord(c):04x}"
    return c


_TEMPORAL_PATCH = 2  # Qwen2.5-VL and Qwen3-VL


def _pixels(pixel_values) -> int:
    """pixel_values: [patches, C * temporal_patch * p * p] with C=3, temporal_patch=2 (Qwen2.5-VL/Qwen3-VL): an
    image is repeated over the temporal patch, so each patch row covers dim / 6 pixels."""
    patches, dim = pixel_values.shape
    return int(patches) * int(dim) // (3 * _TEMPORAL_PATCH)


class RequestObserver:
    """Per-request bookkeeping for metrics and the request log line (see the module docstring)."""

    def __init__(self, request_id: str, peer: str, images: int, metrics: Metrics | None,
                 client_deadline_s: float | None = None, identity: str = ""):
        # identity: the caller's certificate subject or API-key name ("-" = anonymous), the owner of request_id;
        # spaces as \x20 so the text line stays whitespace-separated key=value pairs
        self.fields = {"request_id": log_safe(request_id), "peer": log_safe(peer),
                       "identity": log_safe(identity).replace(" ", "\\x20") or "-", "images": images, "pixels": 0,
                       "vision_pixels": 0,
                       "prompt_tokens": 0, "completion_tokens": 0, "status": "OK", "ttft_ms": None,
                       "e2e_ms": None, "queue_ms": None, "preprocess_ms": None}
        self._aborted = False
        self._client_deadline_s = client_deadline_s  # what the client's deadline left when the call arrived
        self._metrics = metrics
        self._start = time.monotonic()
        self._last_token: float | None = None
        self._gaps: list[float] = []

    def _outcome(self, status: str) -> str:
        """A client whose deadline passed cancels the call itself, usually a moment before the server's copy of the
        deadline fires, so gRPC reports CANCELLED: a cancel that comes within the last 5 % (at least 0.25 s) of the
        client's deadline is logged as DEADLINE_EXCEEDED."""
        if status == "OK" and self._aborted:
            return "ABORTED"
        if status == "CANCELLED" and self._client_deadline_s is not None:
            elapsed = time.monotonic() - self._start
            if elapsed >= self._client_deadline_s - max(0.25, 0.05 * self._client_deadline_s):
                return "DEADLINE_EXCEEDED"
        return status

    def processed(self, processed: types.ProcessedInput, req: types.Request | None = None) -> None:
        """Pixels as sent (from the image headers of req) and as fed to the vision tower, summed over images."""
        self.fields["vision_pixels"] = sum(_pixels(im.pixel_values) for im in processed.images)
        self.fields["prompt_tokens"] = len(processed.input_ids)
        self.fields["preprocess_ms"] = round(processed.preprocess_ms, 2)
        if req is not None:
            self.fields["pixels"] = source_pixels(req)

    def output(self, out: types.EngineOutput) -> None:
        now = time.monotonic()
        if isinstance(out, types.TokenDelta):
            if self._last_token is not None:
                self._gaps.append(now - self._last_token)
            self._last_token = now
            self.fields["completion_tokens"] += len(out.token_ids)
            return
        u, t = out.usage, out.timings
        self._aborted = out.finish_reason == types.FinishReason.ABORT
        self.fields.update(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                           ttft_ms=round(t.ttft_ms, 2), e2e_ms=round(t.e2e_ms, 2), queue_ms=round(t.queue_ms, 2),
                           preprocess_ms=round(t.preprocess_ms, 2))
        if self._metrics is not None:
            self._metrics.observe_finished(record_of(out, tuple(self._gaps)))

    def done(self, status: str) -> None:
        """Log the request line; count a refusal by its status code."""
        self.fields["status"] = self._outcome(status)
        if self.fields["e2e_ms"] is None:
            self.fields["e2e_ms"] = round((time.monotonic() - self._start) * 1e3, 2)
        if self._metrics is not None and status not in _NOT_REJECTED:
            self._metrics.observe_rejected(status)
        text = " ".join(f"{k}={v}" for k, v in self.fields.items())
        request_log.info("request %s", text, extra={"fields": dict(self.fields)})


def source_pixels(req: types.Request) -> int:
    """width x height of every image of req as sent, read from the headers (already validated by the processor)."""
    import io

    from PIL import Image

    total = 0
    for msg in req.messages:
        for part in msg.content:
            if isinstance(part, types.ImageInput):
                try:
                    with Image.open(io.BytesIO(part.data)) as img:
                        total += img.width * img.height
                except Exception:  # noqa: BLE001 - a log field must never fail the request
                    pass
    return total
