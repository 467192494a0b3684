"""Summary metrics over request results, named and defined as in vLLM `bench serve` / SGLang `bench_serving`.

- TTFT: send -> first chunk carrying a token. E2E (vLLM's E2EL): send -> end of stream.
- TPOT per request: (E2E - TTFT) / (output_tokens - 1), requests with >= 2 tokens.
- ITL: every gap between consecutive token-carrying chunks, pooled over requests.
- Throughput: completed requests, output tokens, input + output tokens, each per second of run wall time.
- Goodput: completed requests meeting every given SLO (ttft, tpot, e2e in ms) per second.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from vlm_service.bench.records import TIMING_FIELDS, RequestResult

GOODPUT_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2e", "e2el": "e2e"}


def describe(values: Iterable[float | None]) -> dict:
    """mean, median, p90, p99, max, std and count of the non-None values (None fields when there are none)."""
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"count": 0, "mean": None, "median": None, "p90": None, "p99": None, "max": None, "std": None}
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "std": float(arr.std()),
    }


def parse_goodput(items: Sequence[str] | None) -> dict[str, float]:
    """["ttft:200", "tpot:50", "e2e:2000"] -> {"ttft": 200.0, ...} (milliseconds)."""
    slos = {}
    for item in items or ():
        key, _, value = item.partition(":")
        if key.lower() not in GOODPUT_KEYS:
            raise ValueError(f"bad --goodput {item!r}: keys are ttft, tpot, e2e")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"bad --goodput {item!r}: the value is milliseconds, e.g. ttft:200") from None
        if ms <= 0:
            raise ValueError(f"bad --goodput {item!r}: the value must be positive")
        slos[GOODPUT_KEYS[key.lower()]] = ms
    return slos


def meets_slos(r: RequestResult, slos: dict[str, float]) -> bool:
    """A completed request meets the SLOs; TPOT of a one-token output counts as 0, as in vLLM."""
    if not r.ok:
        return False
    values = {"ttft": r.ttft_ms, "tpot": r.tpot_ms or 0.0, "e2e": r.e2e_ms}
    return all(values[k] <= v for k, v in slos.items())


def summarize(results: Sequence[RequestResult], duration_s: float, slos: dict[str, float] | None = None) -> dict:
    """The summary of one run. duration_s is the run's wall time (first send to last response)."""
    ok = [r for r in results if r.ok]
    slos = slos or {}
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: 0.0)
    summary = {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": dict(Counter(r.status for r in results if not r.ok)),
        "duration_s": duration_s,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "total_images": sum(r.num_images for r in ok),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(in_tokens + out_tokens),
        "ttft_ms": describe(r.ttft_ms for r in ok),
        "tpot_ms": describe(r.tpot_ms for r in ok),
        "itl_ms": describe(x for r in ok for x in r.itl_ms),
        "e2e_ms": describe(r.e2e_ms for r in ok),
        "server_ms": {f: describe(r.server.get(f) for r in ok) for f in TIMING_FIELDS},
    }
    if slos:
        good = sum(meets_slos(r, slos) for r in ok)
        summary.update(goodput_slos_ms=slos, good_requests=good, request_goodput=per_s(good))
    summary.update(vllm_flat(summary))
    return summary


def vllm_flat(summary: dict) -> dict:
    """vLLM `bench serve`'s flat result keys (mean_ttft_ms, median_ttft_ms, p99_ttft_ms, std_..., for ttft, tpot,
    itl, e2el; duration), so tools reading its JSON read ours; completed, request_throughput, output_throughput and
    total_token_throughput already have its names."""
    flat = {"duration": summary["duration_s"]}
    for ours, theirs in (("ttft_ms", "ttft"), ("tpot_ms", "tpot"), ("itl_ms", "itl"), ("e2e_ms", "e2el")):
        for stat in ("mean", "median", "std", "p90", "p99"):
            flat[f"{stat}_{theirs}_ms"] = summary[ours][stat]
    return flat


def merge(parts: Sequence[tuple[list[RequestResult], float]]) -> tuple[list[RequestResult], float]:
    """Pool results of several runs of one configuration (compare rounds): results concatenated, times added."""
    return [r for res, _ in parts for r in res], sum(d for _, d in parts)
