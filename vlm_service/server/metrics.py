"""Glue between the servicer and vlm_service.metrics (Prometheus on --metrics-port; off when 0), plus the one
structured log line per request (logger `vlm_service.requests`).

`RequestObserver` follows one Generate call: image count and pixels, inter-token gaps, the final status. At the end it
feeds the histograms/counters and logs `request_id, peer, identity, images, pixels, prompt/completion tokens, status,
ttft_ms, e2e_ms`. It never sees image bytes or prompt text, so they can never reach the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata

import grpc

from vlm_service import types
from vlm_service.config import ServerConfig
from vlm_service.metrics import Metrics, RequestRecord

log = logging.getLogger(__name__)
request_log = logging.getLogger("vlm_service.requests")

# statuses that are the client's own doing (it left) rather than the server refusing: not counted as rejected
_NOT_REJECTED = ("OK", "CANCELLED")


def start_metrics(cfg: ServerConfig, model_name: str) -> Metrics | None:
    """A Metrics object serving /metrics on cfg.host:cfg.metrics_port, or None when the port is 0."""
    if not cfg.metrics_port:
        return None
    metrics = Metrics(model_name)
    metrics.serve(cfg.metrics_port, host=cfg.host)
    log.info("metrics on http://%s:%d/metrics", cfg.host, cfg.metrics_port)
    return metrics


def record_of(fin: types.Finished, inter_token_s: tuple[float, ...] = ()) -> RequestRecord:
    """The metrics record of a finished request (ms -> s)."""
    u, t = fin.usage, fin.timings
    return RequestRecord(finished_reason=fin.finish_reason.value, prompt_tokens=u.prompt_tokens,
                         completion_tokens=u.completion_tokens, image_tokens=u.image_tokens,
                         cached_tokens=u.cached_tokens, ttft_s=t.ttft_ms / 1e3, e2e_s=t.e2e_ms / 1e3,
                         queue_s=t.queue_ms / 1e3, preprocess_s=t.preprocess_ms / 1e3, vision_s=t.vision_ms / 1e3,
                         inter_token_s=inter_token_s)


def status_name(exc: BaseException | None, context) -> str:
    """The gRPC status a Generate call ended with: OK, CANCELLED (client left), the aborted code, or INTERNAL."""
    if exc is None:
        return "OK"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"


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

    def __init__(self, request_id: str, peer: str, images: int, metrics: Metrics | None, identity: str = ""):
        # identity: the caller's certificate subject or API-key name ("-" = anonymous), the owner of request_id;
        # spaces as \x20 so the text line stays whitespace-separated key=value pairs
        self.fields = {"request_id": log_safe(request_id), "peer": log_safe(peer),
                       "identity": log_safe(identity).replace(" ", "\\x20") or "-", "images": images, "pixels": 0,
                       "prompt_tokens": 0, "completion_tokens": 0, "status": "OK", "ttft_ms": None,
                       "e2e_ms": None}
        self._metrics = metrics
        self._start = time.monotonic()
        self._last_token: float | None = None
        self._gaps: list[float] = []

    def processed(self, processed: types.ProcessedInput) -> None:
        """Pixels fed to the vision tower (after resize), summed over images."""
        self.fields["pixels"] = sum(_pixels(im.pixel_values) for im in processed.images)

    def output(self, out: types.EngineOutput) -> None:
        now = time.monotonic()
        if isinstance(out, types.TokenDelta):
            if self._last_token is not None:
                self._gaps.append(now - self._last_token)
            self._last_token = now
            return
        u, t = out.usage, out.timings
        self.fields.update(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                           ttft_ms=round(t.ttft_ms, 2), e2e_ms=round(t.e2e_ms, 2))
        if self._metrics is not None:
            self._metrics.observe_finished(record_of(out, tuple(self._gaps)))

    def done(self, status: str) -> None:
        """Log the request line; count a refusal by its status code."""
        self.fields["status"] = status
        if self.fields["e2e_ms"] is None:
            self.fields["e2e_ms"] = round((time.monotonic() - self._start) * 1e3, 2)
        if self._metrics is not None and status not in _NOT_REJECTED:
            self._metrics.observe_rejected(status)
        text = " ".join(f"{k}={v}" for k, v in self.fields.items())
        request_log.info("request %s", text, extra={"fields": dict(self.fields)})


async def poll_engine(metrics: Metrics, engine, period_s: float = 0.25) -> None:
    """Forever: copy engine.stats() into the gauges and the vision-cache counters (cancel to stop)."""
    last_hits = last_misses = 0
    while True:
        s = engine.stats()
        used = s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
        metrics.set_engine_state(s.running, s.waiting + s.reserved, used)
        hits, misses = s.vision_cache_hits - last_hits, s.vision_cache_misses - last_misses
        if hits or misses:
            metrics.observe_image_cache(hits, hits + misses)
        last_hits, last_misses = s.vision_cache_hits, s.vision_cache_misses
        await asyncio.sleep(period_s)
