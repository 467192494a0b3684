#!/usr/bin/env python
"""Explain requests' waits from a server's json log with --step-log (logger vlm_service.steps).

    python benchmarks/summarize_steps.py serve.log --records small/requests-*.jsonl --out wait.json

For each request in the harness records (by request_id): the step that first scheduled it, the step that sampled
its first token, and the steps in between with what they carried (tokens, prefill tokens, visual tokens newly
encoded, whether the short-first policy capped the long prefills) and how long each took; and each step's host
time to launch (a long one means something in the launch waited for the device) and to read tokens back. A step's time is the
wall time from its launch to the next step's launch (with overlap scheduling the engine launches one step ahead,
so under a saturated GPU this is the step's device time). Prints / writes JSON: medians over the requests and, per
request, its wait.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def load_steps(log: Path) -> tuple[dict[int, dict], dict[str, dict]]:
    """step number -> step fields (with `ms`: launch to the next launch), request id -> first-token fields."""
    steps, firsts = {}, {}
    for line in log.read_text(errors="replace").splitlines():
        if '"vlm_service.steps"' not in line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "first_token" in entry:
            firsts[entry["first_token"]] = entry
        elif "step" in entry:
            steps[entry["step"]] = entry
    for n, s in steps.items():
        nxt = steps.get(n + 1)
        s["ms"] = nxt["since_prev_ms"] if nxt else None
    return steps, firsts


def request_wait(rid: str, steps: dict[int, dict], firsts: dict[str, dict]) -> dict | None:
    f = firsts.get(rid)
    if f is None:
        return None
    span = [steps[k] for k in range(f["first_step"], f["step"] + 1) if k in steps]
    before = steps.get(f["first_step"] - 1)  # the step in flight when it was first scheduled
    return {"request_id": rid, "steps_to_first_token": f["steps_to_first_token"],
            "steps_ms": [s.get("ms") for s in span], "steps_tokens": [s["tokens"] for s in span],
            "steps_new_visual_tokens": [s["new_visual_tokens"] for s in span],
            "steps_mixed": [s["mixed"] for s in span],
            "steps_launch_ms": [s.get("launch_ms") for s in span], "steps_read_ms": [s.get("read_ms") for s in span],
            "step_before_ms": before.get("ms") if before else None,
            "step_before_new_visual_tokens": before["new_visual_tokens"] if before else None}


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def summarize(log: Path, request_ids: list[str]) -> dict:
    steps, firsts = load_steps(log)
    waits = [w for w in (request_wait(rid, steps, firsts) for rid in request_ids) if w is not None]
    all_ms = [s["ms"] for s in steps.values() if s.get("ms") is not None]
    big = [s["ms"] for s in steps.values() if s.get("ms") is not None and s["new_visual_tokens"] >= 1024]
    return {"requests": len(request_ids), "with_step_log": len(waits),
            "median_steps_to_first_token": _median(w["steps_to_first_token"] for w in waits),
            "median_ms_of_own_steps": _median(sum(m for m in w["steps_ms"] if m) for w in waits),
            "median_ms_of_step_before": _median(w["step_before_ms"] for w in waits),
            "own_steps_mixed_fraction": round(sum(all(w["steps_mixed"]) for w in waits) / len(waits), 3)
            if waits else None,
            "server_steps": len(steps), "median_step_ms": _median(all_ms),
            "p90_step_ms": round(sorted(all_ms)[int(0.9 * (len(all_ms) - 1))], 2) if all_ms else None,
            "median_ms_of_steps_encoding_1024plus_visual_tokens": _median(big),
            "median_launch_ms_of_those": _median(s.get("launch_ms") for s in steps.values()
                                                 if s["new_visual_tokens"] >= 1024),
            "median_launch_ms": _median(s.get("launch_ms") for s in steps.values()),
            "per_request": waits}


def record_ids(paths: list[Path]) -> list[str]:
    ids = []
    for p in paths:
        for line in p.read_text().splitlines():
            if line.strip():
                ids.append(json.loads(line)["request_id"])
    return ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--records", type=Path, nargs="+", required=True, help="harness requests-*.jsonl files")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    out = summarize(args.log, record_ids(args.records))
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
