"""Prometheus metrics on --metrics-port (off when 0): in-flight streams and engine stats."""

from __future__ import annotations

import logging

from vlm_service.config import ServerConfig

log = logging.getLogger(__name__)


def start_metrics(cfg: ServerConfig, servicer) -> None:
    """Start the /metrics HTTP endpoint on cfg.host:cfg.metrics_port when the port is set."""
    if not cfg.metrics_port:
        return
    from prometheus_client import Gauge, start_http_server

    Gauge("vlm_inflight_streams", "Generate streams in flight").set_function(lambda: servicer.inflight)
    Gauge("vlm_draining", "1 while the server drains").set_function(lambda: float(servicer.draining))
    start_http_server(cfg.metrics_port, addr=cfg.host)
    log.info("metrics on http://%s:%d/metrics", cfg.host, cfg.metrics_port)
