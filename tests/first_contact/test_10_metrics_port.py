"""Item 10: the metrics port answers /metrics only (404 elsewhere, so a probe aimed at /health fails there), emits
no `_created` series, and counts prefix-cache queries and hits (vLLM's names) for a hit rate."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import pytest

from vlm_service._proto.vlm.v1 import vlm_pb2_grpc
from vlm_service.client import build_request


def _get(served, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.parametrize("path", ["/", "/health", "/metrics/x", "/favicon.ico"])
def test_other_paths_are_404(served, path):
    code, _ = _get(served, path)
    assert code == 404


def test_metrics_without_created_and_with_prefix_cache_counters(served):
    prompt = "the same long prompt, twice over, so the second request finds whole blocks cached " * 3
    with grpc.secure_channel(served.target, served.credentials()) as channel:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        for _ in range(2):
            list(stub.Generate(build_request(prompt, max_tokens=1), timeout=60))
    code, text = _get(served, "/metrics")
    assert code == 200 and "vlm:time_to_first_token_seconds" in text
    assert "_created" not in text
    queries = _value(text, "vlm:prefix_cache_queries_total")
    hits = _value(text, "vlm:prefix_cache_hits_total")
    assert queries > 0 and 0 < hits < queries
