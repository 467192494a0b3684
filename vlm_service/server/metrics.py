"""The server's side of the metrics: Prometheus on --metrics-port (off when 0) and the engine-state poller.

The per-request observer (metrics record + the one structured log line per request) is transport-neutral and lives
in vlm_service/request_log.py, where the pipeline imports it from.
"""

from __future__ import annotations

import asyncio
import logging

from vlm_service.config import ServerConfig
from vlm_service.metrics import Metrics

log = logging.getLogger(__name__)


def start_metrics(cfg: ServerConfig, model_name: str) -> Metrics | None:
    """A Metrics object serving /metrics on cfg.host:cfg.metrics_port, or None when the port is 0."""
    if not cfg.metrics_port:
        return None
    metrics = Metrics(model_name)
    metrics.serve(cfg.metrics_port, host=cfg.host)
    log.info("metrics on http://%s:%d/metrics", cfg.host, cfg.metrics_port)
    return metrics


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
