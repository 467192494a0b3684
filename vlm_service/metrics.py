"""Prometheus metrics on a separate plain-HTTP port. Names mirror vLLM's (`vllm:` -> `vlm:`) so dashboards adapt.

One `Metrics` object per server, on its own CollectorRegistry (tests can run several servers in one process).
Every metric carries the `model_name` label.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

# no `<name>_created` series: they double the counters and histograms, and vLLM's dashboards do not read them
prometheus_client.disable_created_metrics()

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                    20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                0.5, 0.75, 1.0, 2.5)


@dataclass
class RequestRecord:
    """What a finished request reports to the metrics (seconds, token counts)."""

    finished_reason: str
    prompt_tokens: int
    completion_tokens: int
    image_tokens: int
    cached_tokens: int
    ttft_s: float
    e2e_s: float
    queue_s: float
    preprocess_s: float
    vision_s: float
    inter_token_s: tuple[float, ...] = ()


class Metrics:
    """Every vlm:* metric of one server, labelled with its model name; `serve()` exposes them over HTTP."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._http = None  # (server, thread) while serving
        self.model_name = model_name
        label = ["model_name"]

        def hist(name, doc, buckets=_LATENCY_BUCKETS):
            return Histogram(name, doc, label, buckets=buckets, registry=self.registry)

        def counter(name, doc, extra=()):
            return Counter(name, doc, label + list(extra), registry=self.registry)

        def gauge(name, doc):
            return Gauge(name, doc, label, registry=self.registry)

        self.ttft = hist("vlm:time_to_first_token_seconds", "Time to first token")
        self.itl = hist("vlm:inter_token_latency_seconds", "Time between streamed tokens", _ITL_BUCKETS)
        self.e2e = hist("vlm:e2e_request_latency_seconds", "End-to-end request latency")
        self.queue = hist("vlm:request_queue_time_seconds", "Time waiting for the scheduler")
        self.preprocess = hist("vlm:image_preprocess_seconds", "Image decode and preprocessing time per request")
        self.vision = hist("vlm:vision_encode_seconds", "Vision encoder time per request")
        self.running = gauge("vlm:num_requests_running", "Requests in the running batch")
        self.waiting = gauge("vlm:num_requests_waiting", "Requests admitted and waiting")
        self.kv_usage = gauge("vlm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)")
        self.prompt_tokens = counter("vlm:prompt_tokens_total", "Prompt tokens processed")
        self.generation_tokens = counter("vlm:generation_tokens_total", "Tokens generated")
        self.image_tokens = counter("vlm:image_tokens_total", "Image tokens in prompts")
        self.success = counter("vlm:request_success_total", "Finished requests", ["finished_reason"])
        self.rejected = counter("vlm:request_rejected_total", "Requests refused with a gRPC status", ["code"])
        self.prefix_hits = counter("vlm:prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache")
        # vLLM's pair (tokens): hit rate = rate(vlm:prefix_cache_hits_total) / rate(vlm:prefix_cache_queries_total)
        self.prefix_queries = counter("vlm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache")
        self.prefix_cache_hits = counter("vlm:prefix_cache_hits", "Prompt tokens found in the prefix cache")
        self.image_cache_hits = counter("vlm:image_cache_hits_total", "Images served from the vision cache")
        self.image_cache_queries = counter("vlm:image_cache_queries_total", "Images looked up in the vision cache")

    def _l(self, metric, **extra):
        return metric.labels(model_name=self.model_name, **extra)

    def observe_finished(self, r: RequestRecord) -> None:
        self._l(self.success, finished_reason=r.finished_reason).inc()
        for metric, value in ((self.ttft, r.ttft_s), (self.e2e, r.e2e_s), (self.queue, r.queue_s),
                              (self.preprocess, r.preprocess_s), (self.vision, r.vision_s)):
            self._l(metric).observe(value)
        for gap in r.inter_token_s:
            self._l(self.itl).observe(gap)
        self._l(self.prompt_tokens).inc(r.prompt_tokens)
        self._l(self.generation_tokens).inc(r.completion_tokens)
        self._l(self.image_tokens).inc(r.image_tokens)
        self._l(self.prefix_hits).inc(r.cached_tokens)
        self._l(self.prefix_queries).inc(r.prompt_tokens)
        self._l(self.prefix_cache_hits).inc(r.cached_tokens)

    def observe_rejected(self, code: str) -> None:
        self._l(self.rejected, code=code).inc()

    def set_engine_state(self, running: int, waiting: int, kv_usage: float) -> None:
        self._l(self.running).set(running)
        self._l(self.waiting).set(waiting)
        self._l(self.kv_usage).set(kv_usage)

    def observe_image_cache(self, hits: int, queries: int) -> None:
        self._l(self.image_cache_hits).inc(hits)
        self._l(self.image_cache_queries).inc(queries)

    def serve(self, port: int, host: str = "0.0.0.0"):
        """Start the /metrics HTTP endpoint in a daemon thread (every other path: 404); returns (server, thread)."""
        cls = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        server = make_server(host.strip("[]"), port, _only_metrics(make_wsgi_app(self.registry)), cls,
                             handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http")
        thread.start()
        self._http = (server, thread)
        return self._http

    def close(self) -> None:
        """Stop the /metrics endpoint (when serving) and free its port."""
        if self._http is not None:
            self._http[0].shutdown()
            self._http[0].server_close()
            self._http = None


def _only_metrics(app):
    """The WSGI app answers /metrics only: a probe pointed at /health must not get a 200 full of metrics."""

    def wrapped(environ, start_response):
        if environ.get("PATH_INFO", "") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]
        return app(environ, start_response)

    return wrapped


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name; scrapes are not worth a log line
        pass
