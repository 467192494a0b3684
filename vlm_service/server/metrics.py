"""Glue between the servicer and vlm_service.metrics (Prometheus on --metrics-port; off when 0)."""

from __future__ import annotations

import logging

from vlm_service import types
from vlm_service.config import ServerConfig
from vlm_service.metrics import Metrics, RequestRecord

log = logging.getLogger(__name__)


def start_metrics(cfg: ServerConfig, model_name: str) -> Metrics | None:
    """A Metrics object serving /metrics on cfg.host:cfg.metrics_port, or None when the port is 0."""
    if not cfg.metrics_port:
        return None
    metrics = Metrics(model_name)
    metrics.serve(cfg.metrics_port, host=cfg.host)
    log.info("metrics on http://%s:%d/metrics", cfg.host, cfg.metrics_port)
    return metrics


def record_of(fin: types.Finished) -> RequestRecord:
    """The metrics record of a finished request (ms -> s)."""
    u, t = fin.usage, fin.timings
    return RequestRecord(finished_reason=fin.finish_reason.value, prompt_tokens=u.prompt_tokens,
                         completion_tokens=u.completion_tokens, image_tokens=u.image_tokens,
                         cached_tokens=u.cached_tokens, ttft_s=t.ttft_ms / 1e3, e2e_s=t.e2e_ms / 1e3,
                         queue_s=t.queue_ms / 1e3, preprocess_s=t.preprocess_ms / 1e3, vision_s=t.vision_ms / 1e3)
