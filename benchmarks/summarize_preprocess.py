#!/usr/bin/env python
"""The table of `gpu_next.sh preprocess4` as JSON on stdout: per preset and image format, client TTFT and the
server's breakdown (medians) for --preprocess-device cpu and cuda, plus the in-process preprocess times.

    python benchmarks/summarize_preprocess.py $OUT > $OUT/preprocess4.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SERVER = ("queue_ms", "preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms")


def _row(run: dict) -> dict:
    m = run["metrics"]
    return {"completed": m["completed"], "failed": m["failed"], "client_ttft_median_ms": m["ttft_ms"]["median"],
            "client_ttft_p90_ms": m["ttft_ms"]["p90"],
            "server_median_ms": {k: m["server_ms"][k]["median"] for k in SERVER}}


def main(out_dir: Path) -> int:
    table = {}
    for summary in sorted(out_dir.glob("ttft_pre4_*/summary.json")):
        name = summary.parent.name.removeprefix("ttft_pre4_")  # <preset>_<format>
        table[name] = {run["label"]: _row(run) for run in json.loads(summary.read_text())["runs"]}
    inproc = out_dir / "preprocess_inproc.json"
    result = {"ttft": table, "in_process": json.loads(inproc.read_text())["results"] if inproc.is_file() else None}
    print(json.dumps(result, indent=1))
    return 0 if table else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
