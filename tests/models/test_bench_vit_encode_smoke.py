"""benchmarks/bench_vit_encode.py's towers-only bookkeeping on CPU with tiny preset configs and a wall-clock timer
(the numbers mean nothing here): every backend gets a row, the Qwen2.5-VL MLP is padded as a checkpoint load pads
it, a run without graph replays is reported as an error rather than as a time, and the kernel table aggregates."""

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from vision_tiny_helpers import QWEN3_VISION, QWEN25_VISION

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vit_encode.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_vit_encode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from vlm_service.demo import presets

    tiny = {"qwen2_5_vl_7b": QWEN25_VISION, "qwen3_vl_8b": QWEN3_VISION}
    monkeypatch.setattr(presets, "preset_config", lambda name: {"vision_config": dict(tiny[name])})

    def wall_ms(fn, reps):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) * 1e3 / reps

    monkeypatch.setattr(module, "time_ms", wall_ms)
    return module


@pytest.mark.parametrize("preset", ["qwen2_5_vl_7b", "qwen3_vl_8b"])
def test_tower_rows(bench, preset):
    row = bench.bench_tower(preset, 112, reps=2, backends=["sdpa"], profile=True, device="cpu")
    side = 8  # 112 px: round(112 / (patch * merge)) * merge patches per side, 8 for patch 14 and 16 alike
    assert row["grid"] == [1, side, side] and row["patches"] == side * side
    assert isinstance(row["ms"]["sdpa"], float)
    assert row["graph_ms"]["sdpa"].startswith("error: no graph replay")  # CPU: no CUDA graphs, never a fake time
    assert "sdpa" not in row["profile"]  # profiles only replays
    assert row["vision_mlp_padded"] == (preset == "qwen2_5_vl_7b")


def test_baseline_runs_the_unfused_sequence(bench, monkeypatch):
    calls = []
    real = bench.vit_unfused.qwen3_compute
    monkeypatch.setattr(bench.vit_unfused, "qwen3_compute", lambda *a: calls.append(1) or real(*a))
    row = bench.bench_tower("qwen3_vl_8b", 64, reps=1, backends=["sdpa"], profile=False, device="cpu",
                            baseline=["sdpa"])
    assert calls and row["unfused"]["sdpa"]["graph_ms"].startswith("error: no graph replay")  # CPU: eager only


def test_unknown_backend_is_reported_not_fatal(bench):
    row = bench.bench_tower("qwen3_vl_8b", 64, reps=1, backends=["nope", "sdpa"], profile=False, device="cpu")
    assert row["ms"]["nope"].startswith("error: ValueError") and isinstance(row["ms"]["sdpa"], float)


def test_kernel_kinds_and_busy_union():
    spec = importlib.util.spec_from_file_location("kernel_profile", SCRIPT.parent / "kernel_profile.py")
    kp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kp)
    assert kp.kind_of("void cutlass::device_kernel<flash::FlashAttnFwdSm90<...>>") == "attention"
    assert kp.kind_of("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "gemm"
    assert kp.kind_of("rope_qkv_kernel") == "rotary"
    assert kp.kind_of("add_layernorm_kernel") == "norm"
    assert kp.union_us([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_unfused_baseline_computes_what_the_tower_computes(bench, arch):
    import vit_backends
    from vision_tiny_helpers import GRIDS, pixels_for, tiny_tower

    tower = tiny_tower(arch, vit_backends.create("sdpa"))
    rows = GRIDS["three_clipped_windows"]
    pixels, grid = pixels_for(arch, rows, 0), torch.tensor(rows)
    meta = tower.metadata(grid, pixels.device) if arch == "qwen2_5_vl" else tower.metadata(grid)
    fn = bench.vit_unfused.qwen25_compute if arch == "qwen2_5_vl" else bench.vit_unfused.qwen3_compute
    with torch.no_grad():
        for got, want in zip(fn(tower, pixels, meta), tower.compute(pixels, meta), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
