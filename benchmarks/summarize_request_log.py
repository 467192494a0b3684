#!/usr/bin/env python
"""Summarise a server's request log (text format, logger vlm_service.requests): server-side TTFT / E2E statistics.

    python benchmarks/summarize_request_log.py --label fa3 --label auto fa3.log auto.log --out summary.json

For runs where the client's own records were lost (e.g. a benchmark stopped by its time limit): the server logs one
line per finished request with its own ttft_ms and e2e_ms (measured from arrival at the server, so they exclude the
network and the client). Throughput is completed requests over the span between the first request's arrival
(its end time minus its e2e) and the last request's end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_service.bench.metrics import describe  # noqa: E402

LINE = re.compile(r"^(?P<ts>\S+ \S+) INFO vlm_service\.requests: request (?P<fields>.*)$")


def parse(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if not m:
            continue
        fields = dict(kv.split("=", 1) for kv in m["fields"].split() if "=" in kv)
        fields["end"] = dt.datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        rows.append(fields)
    return rows


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "OK"]
    ttft = [float(r["ttft_ms"]) for r in ok]
    e2e = [float(r["e2e_ms"]) for r in ok]
    start = min(r["end"] - float(r["e2e_ms"]) / 1e3 for r in ok) if ok else 0.0
    span = (max(r["end"] for r in ok) - start) if ok else 0.0
    out_tokens = sum(int(r["completion_tokens"]) for r in ok)
    return {"requests": len(rows), "ok": len(ok), "span_s": span,
            "request_throughput": len(ok) / span if span else None,
            "output_token_throughput": out_tokens / span if span else None,
            "server_ttft_ms": describe(ttft), "server_e2e_ms": describe(e2e),
            "prompt_tokens_mean": sum(int(r["prompt_tokens"]) for r in ok) / max(len(ok), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", action="append", required=True)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip", type=int, default=0, help="leave out each log's first N requests (warm-up)")
    args = ap.parse_args()
    if len(args.label) != len(args.logs):
        ap.error("one --label per log, in the same order")
    result = {label: summarize(parse(p)[args.skip:]) for label, p in zip(args.label, args.logs)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for label, s in result.items():
        t = s["server_ttft_ms"]
        print(f"{label:18s} ok={s['ok']:4d} ttft median={t['median']:.1f} p90={t['p90']:.1f} p99={t['p99']:.1f} "
              f"req/s={s['request_throughput']:.2f} out tok/s={s['output_token_throughput']:.1f}")


if __name__ == "__main__":
    main()
