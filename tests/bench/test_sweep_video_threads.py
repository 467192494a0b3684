"""benchmarks/sweep_video_threads.py runs end to end on a small clip and writes a row per allocation, the tail and
the longest segment's thread scaling (a smoke test: the times depend on the host and are not checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_writes_every_row(tmp_path):
    pytest.importorskip("av")
    from vlm_service.bench.clips import make_clip

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip(seconds=3.0, width=128, height=96, fps=10.0, gop=10))
    out = tmp_path / "sweep.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_video_threads.py"), "--out", str(out),
                    "--clip", str(clip), "--repeats", "1", "--rows", "5", "--device", "cpu",
                    "--state-dir", str(tmp_path / "state")], check=True, cwd=ROOT, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text())
    rows = result["allocations"]
    assert len(rows) == 5 and [r["drain"] for r in rows] == [False, True, True, True, True]
    assert [r["preopen"] for r in rows] == [False, False, True, True, True]
    assert [r["stream_frames"] for r in rows] == [False] * 4 + [True]
    for row in rows:
        for stage in ("decode_parallel", "video_gpu_path", "prepare_device"):
            assert row[stage]["median_ms"] > 0
    assert len(result["segments"]) >= 2 and result["best"]["prepare_device_ms"] > 0
    assert result["tail"]["gpu_call"]["median_ms"] > 0 and result["tail"]["upload"]["median_ms"] >= 0
    assert "1" in result["longest_alone"] and result["tail"]["after_last_frame"]["median_ms"] > 0
