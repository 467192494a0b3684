"""Scraping /metrics during a short load run: every metric of the issue moves (histograms count observations,
gauges go above zero under load, counters grow, cache hits show), labelled with the model name."""

from __future__ import annotations

import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from reliability_helpers import collect, png, wait_until
from vlm_service.client import build_request

HISTOGRAMS = ["vlm:time_to_first_token_seconds", "vlm:inter_token_latency_seconds", "vlm:e2e_request_latency_seconds",
              "vlm:request_queue_time_seconds", "vlm:image_preprocess_seconds", "vlm:vision_encode_seconds"]
GAUGES = ["vlm:num_requests_running", "vlm:num_requests_waiting", "vlm:kv_cache_usage_perc"]
COUNTERS = ["vlm:prompt_tokens_total", "vlm:generation_tokens_total", "vlm:image_tokens_total",
            "vlm:request_success_total", "vlm:request_rejected_total", "vlm:prefix_cache_hit_tokens_total",
            "vlm:image_cache_hits_total", "vlm:image_cache_queries_total"]


def scrape(port: int) -> dict[str, float]:
    """{sample name (+ labels): value}; histograms as their _count, counters as _total sums over labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels.get("model_name") == "demo", s
            if s.name.endswith("_count") or family.type in ("gauge", "counter"):
                name = s.name if family.type != "histogram" else s.name.removesuffix("_count")
                out[name] = out.get(name, 0.0) + s.value
    return out


def _load_while_scraping(stub, port: int) -> dict[str, float]:
    """12 long streams (8 run, 4 wait): the gauges' maximum as seen by scrapes."""
    streams = [stub.Generate(build_request(f"long {i}", [png(seed=200 + i)], max_tokens=300, min_tokens=300))
               for i in range(12)]
    peak = {g: 0.0 for g in GAUGES}

    def seen_all() -> bool:
        now = scrape(port)
        for g in GAUGES:
            peak[g] = max(peak[g], now.get(g, 0.0))
        return all(peak.values())

    try:
        wait_until(seen_all, timeout=10.0, step=0.05)
    finally:
        for s in streams:
            s.cancel()
    return peak


def test_every_metric_moves_under_load(server, stub):
    port = server.server.cfg.server.metrics_port
    before = scrape(port)
    image, long_prompt = png(48, 48, seed=210), "a prompt long enough to fill whole KV blocks " * 4
    for _ in range(3):  # the same image and prompt again: prefix-cache hits
        collect(stub.Generate(build_request(long_prompt, [image], max_tokens=5, min_tokens=5)))
    for i in range(2):  # the same image after another system prompt: the prefix misses, the vision cache hits
        collect(stub.Generate(build_request("x", [image], system=f"system {i}", max_tokens=2)))
    try:
        collect(stub.Generate(build_request("bad", [b"not an image"])))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    peak = _load_while_scraping(stub, port)
    assert all(v > 0 for v in peak.values()), peak
    assert wait_until(lambda: scrape(port)["vlm:num_requests_running"] == 0, 5.0), "gauges fall back when idle"
    after = scrape(port)
    moved = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in HISTOGRAMS + COUNTERS}
    assert all(d > 0 for d in moved.values()), {m: d for m, d in moved.items() if d <= 0}
