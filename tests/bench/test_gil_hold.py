"""benchmarks/gil_hold.py runs end to end on small images and writes the monitor's numbers per case (a smoke test:
the hold times themselves depend on the host and are not checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_writes_every_case(tmp_path):
    out = tmp_path / "gil.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gil_hold.py"), "--out", str(out), "--sides", "256",
                    "--repeats", "3", "--skip-video", "--state-dir", str(tmp_path / "state")], check=True, cwd=ROOT,
                   timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {"jpeg_256", "png_256"}
    for case in result["cases"].values():
        assert case["process_median_ms"] > 0 and case["monitor"]["samples"] > 0
    assert result["baseline"]["samples"] > 100  # the monitor ran through the quiet second
