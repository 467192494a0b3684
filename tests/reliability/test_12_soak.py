"""12. Soak: many requests with unique images over a Unix socket; RSS, fds, KV blocks and request maps return to
baseline (within 5 %; counts that were 0 return to 0). CI runs a short soak; the 5,000-request one is marked slow
(`pytest -m slow tests/reliability/test_12_soak.py`, or `python benchmarks/soak.py --requests 5000`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("vlm_soak", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(report: dict) -> None:
    assert set(report["outcomes"]) <= {"OK", "CANCELLED"}, report["outcomes"]
    assert report["outcomes"].get("OK", 0) >= 0.9 * report["requests"]
    after = report["after"]
    for key in ("kv_blocks_used", "tracked_requests", "reserved", "running", "waiting", "streams_in_flight"):
        assert after[key] == 0, (key, report)
    assert all(report["within_5_percent"].values()), report


def test_short_soak_returns_to_baseline(state_dir):
    _check(_soak_module().run_soak(requests=300, warmup=150, state_dir=state_dir))


@pytest.mark.slow
def test_soak_5000_returns_to_baseline(state_dir, tmp_path):
    report = _soak_module().run_soak(requests=5000, warmup=300, state_dir=state_dir)
    print(report)
    _check(report)
