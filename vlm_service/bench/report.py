"""Result files and console tables: one JSONL line per request, summary.json (config, versions, date, runs)."""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

from vlm_service.bench.records import RequestResult

_PACKAGES = ("vlm-service", "grpcio", "protobuf", "numpy", "pillow", "torch", "transformers", "triton",
             "flashinfer-python", "fa3-fwd", "nvidia-cudnn-frontend", "matplotlib")


def versions() -> dict:
    """Installed versions of what matters to a measurement (missing packages are left out)."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_") or "run"


def write_requests(result_dir: Path, label: str, results: Sequence[RequestResult]) -> Path:
    """requests-<label>.jsonl: one line per request (warmup excluded)."""
    path = Path(result_dir) / f"requests-{safe_label(label)}.jsonl"
    with open(path, "w") as f:
        for r in results:
            f.write(json.dumps(r.to_json()) + "\n")
    return path


def write_summary(result_dir: Path, config: dict, runs: list[dict], extra: dict | None = None) -> Path:
    """summary.json: {"date", "versions", "config", "runs": [{label, ..., "metrics": {...}}], **extra}."""
    body = {"date": now_iso(), "versions": versions(), "command": sys.argv, "config": config, "runs": runs}
    body.update(extra or {})
    path = Path(result_dir) / "summary.json"
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    return path


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_run(label: str, m: dict) -> str:
    """A vLLM-style block of one run's summary."""
    lines = [f"{'=' * 18} {label} {'=' * 18}",
             f"Successful / failed requests:  {m['completed']} / {m['failed']}  {m['errors'] or ''}",
             f"Benchmark duration (s):        {m['duration_s']:.2f}",
             f"Total input / output tokens:   {m['total_input_tokens']} / {m['total_output_tokens']}",
             f"Request throughput (req/s):    {m['request_throughput']:.2f}",
             f"Output token throughput (t/s): {m['output_throughput']:.2f}",
             f"Total token throughput (t/s):  {m['total_token_throughput']:.2f}"]
    if "request_goodput" in m:
        lines.append(f"Request goodput (req/s):       {m['request_goodput']:.2f}  SLOs {m['goodput_slos_ms']}")
    lines.append(f"{'ms':<18}{'mean':>10}{'median':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    rows = [(k.upper(), m[f"{k}_ms"]) for k in ("ttft", "tpot", "itl", "e2e")]
    rows += [(f"server {k[:-3]}", d) for k, d in m["server_ms"].items()]
    for name, d in rows:
        lines.append(f"{name:<18}" + "".join(f"{_fmt(d[s]):>10}" for s in ("mean", "median", "p90", "p99", "max")))
    return "\n".join(lines)


RATIO_METRICS = (("ttft_ms", "mean"), ("ttft_ms", "median"), ("ttft_ms", "p99"), ("tpot_ms", "median"),
                 ("e2e_ms", "median"), ("request_throughput", None), ("output_throughput", None))


def metric_value(m: dict, key: str, stat: str | None):
    return m.get(key) if stat is None else (m.get(key) or {}).get(stat)


def ratio_table(named: Sequence[tuple[str, dict]]) -> tuple[str, list[dict]]:
    """Each configuration against the first: value and ratio (value / baseline) per metric."""
    base_name, base = named[0]
    rows, lines = [], [f"{'metric':<22}" + "".join(f"{n[:20]:>22}" for n, _ in named)]
    for key, stat in RATIO_METRICS:
        name = key if stat is None else f"{key}.{stat}"
        b = metric_value(base, key, stat)
        cells, row = [], {"metric": name}
        for n, m in named:
            v = metric_value(m, key, stat)
            ratio = v / b if v is not None and b else None
            row[n] = {"value": v, "ratio_vs_" + base_name: ratio}
            cells.append(f"{_fmt(v)} ({'-' if ratio is None else f'{ratio:.2f}x'})")
        rows.append(row)
        lines.append(f"{name:<22}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines), rows
