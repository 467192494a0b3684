"""The GPU benchmark script's bookkeeping, run on CPU with a wall-clock timer (the numbers mean nothing here)."""

import importlib.util
import time
from pathlib import Path

import pytest

from vit_backends import create

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vit_backends.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("vit_backends_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def wall_timer(backend, args, reps):
        start = time.perf_counter()
        backend(*args)
        wall = time.perf_counter() - start
        return wall * 1e3, wall * 1e6, wall * 1e6, None  # no CUDA graph timing on CPU

    monkeypatch.setattr(module, "DEVICE", "cpu")
    monkeypatch.setattr(module, "time_backend", wall_timer)
    return module


def test_workloads_cover_the_brief(bench):
    names = [w["name"] for w in bench.workloads()]
    assert len(names) == 21 and "qwen2.5-vl window 2048px" in names and "gpu.md 2x2304 d64" in names
    window = next(w for w in bench.workloads() if w["name"] == "qwen2.5-vl window 448px")
    assert window["lengths"] == [64] * 16 and window["head_dim"] == 80


def test_bench_shape_row(bench):
    shape = {"name": "tiny", "head_dim": 64, "lengths": [64, 64, 16]}
    row = bench.bench_shape(shape, {"sdpa": create("sdpa")}, create("auto"), reps=2)
    assert row["tokens"] == 144 and row["segments"] == 3 and row["max_seqlen"] == 64
    assert row["best"] == "sdpa" and row["auto_choice"] == "sdpa" and row["auto_ratio"] > 0
    assert row["max_abs_diff_vs_sdpa"]["sdpa"] == 0.0 and not row["errors"]
    assert set(row["us_median_loop"]) == {"sdpa", "auto"} and row["us"]["sdpa"] == row["us_loop"]["sdpa"]
