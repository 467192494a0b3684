import math

import pytest

from vlm_service.bench.loadgen import RequestResult
from vlm_service.bench.metrics import describe, meets_slos, parse_goodput, summarize


def _ok(i, ttft, e2e, tokens, itl=None, prompt=10):
    r = RequestResult(i, f"r{i}", ok=True, ttft_ms=ttft, e2e_ms=e2e, output_tokens=tokens, prompt_tokens=prompt,
                      num_images=1, itl_ms=itl or [], server={"queue_ms": 1.0, "vision_ms": 2.0 * i})
    return r


def test_describe():
    d = describe([1, 2, 3, 4, None])
    assert d["count"] == 4 and d["mean"] == 2.5 and d["median"] == 2.5 and d["max"] == 4
    assert math.isclose(d["p90"], 3.7) and math.isclose(d["p99"], 3.97)
    assert describe([])["mean"] is None and describe([None])["count"] == 0


def test_tpot_follows_the_vllm_definition():
    assert _ok(0, 100.0, 400.0, 4).tpot_ms == 100.0  # (400 - 100) / (4 - 1)
    assert _ok(0, 100.0, 100.0, 1).tpot_ms is None
    assert RequestResult(0, "x", ok=False).tpot_ms is None


def test_summarize_counts_throughput_errors_and_goodput():
    results = [_ok(0, 50.0, 250.0, 5, [50.0] * 4), _ok(1, 300.0, 500.0, 3, [100.0, 100.0]),
               RequestResult(2, "e", status="INVALID_ARGUMENT"), RequestResult(3, "d", status="DEADLINE_EXCEEDED"),
               RequestResult(4, "e2", status="INVALID_ARGUMENT")]
    m = summarize(results, 2.0, parse_goodput(["ttft:100", "tpot:60"]))
    assert (m["num_requests"], m["completed"], m["failed"]) == (5, 2, 3)
    assert m["errors"] == {"INVALID_ARGUMENT": 2, "DEADLINE_EXCEEDED": 1}
    assert m["total_output_tokens"] == 8 and m["total_input_tokens"] == 20
    assert m["request_throughput"] == 1.0 and m["output_throughput"] == 4.0 and m["total_token_throughput"] == 14.0
    assert m["itl_ms"]["count"] == 6 and m["tpot_ms"]["mean"] == 75.0  # (50 + 100) / 2
    assert m["good_requests"] == 1 and m["request_goodput"] == 0.5
    assert m["server_ms"]["vision_ms"]["max"] == 2.0 and m["server_ms"]["prefill_ms"]["count"] == 0


def test_goodput_parsing_and_slo_check():
    assert parse_goodput(["ttft:200", "e2el:1000", "TPOT:5"]) == {"ttft": 200.0, "e2e": 1000.0, "tpot": 5.0}
    for bad in (["foo:1"], ["ttft:abc"], ["ttft:-1"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)
    assert meets_slos(_ok(0, 10.0, 20.0, 1), {"tpot": 1.0})  # one token: TPOT counts as 0
    assert not meets_slos(_ok(0, 10.0, 20.0, 1), {"e2e": 19.0})
