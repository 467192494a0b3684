"""benchmarks/bench_http_parse.py runs and writes both timings (a smoke test: the numbers themselves are not checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_writes_both_timings(tmp_path):
    out = tmp_path / "parse.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_http_parse.py"), "--out", str(out),
                    "--image-mib", "0.05", "--repeats", "2"], check=True, cwd=ROOT, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text())
    assert result["body_bytes"] > 0.05 * (1 << 20) * 4 / 3
    assert result["plain_ms"] > 0 and result["lifted_ms"] > 0
