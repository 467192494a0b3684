"""benchmarks/profile_decode.py's aggregation (the GPU run itself needs the H200) and the --layers override."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("profile_decode", ROOT / "benchmarks" / "profile_decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ev(name, start, end, device=torch.autograd.DeviceType.CUDA):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_kernel_table_sums_per_step_and_sorts():
    mod = _module()
    # 2 steps, 2 layers: "gemm" twice per layer-step (8 calls of 10 µs), "norm" 4 calls of 3 µs overlapping a gemm,
    # one "head" per step of 50 µs, a CPU event ignored
    events = [_ev("gemm", 100 * i, 100 * i + 10) for i in range(8)]
    events += [_ev("norm", 100 * i + 5, 100 * i + 8) for i in range(4)]
    events += [_ev("head", 2000 + 100 * i, 2050 + 100 * i) for i in range(2)]
    events += [_ev("cpu_op", 0, 5000, torch.autograd.DeviceType.CPU)]
    rows, busy_ms, kernels = mod.kernel_table(events, steps=2, layers=2)
    assert [r["name"] for r in rows] == ["head", "gemm", "norm"]  # 50, 40, 6 µs per step
    head, gemm, norm = rows
    assert gemm["us_per_step"] == 40 and gemm["calls_per_step"] == 4 and gemm["per_layer_us"] == 20
    assert head["us_per_step"] == 50 and "per_layer_us" not in head  # once per step, not per layer
    assert norm["us_per_step"] == 6 and norm["per_layer_us"] == 3
    assert busy_ms == pytest.approx((8 * 10 + 2 * 50) / 2 / 1e3)  # the norms lie inside gemm spans
    assert kernels == 7


def test_build_random_model_keeps_the_first_n_layers():
    import vit_backends
    from vlm_service.errors import ModelLoadError
    from vlm_service.demo.presets import build_random_model

    for name in ("random:qwen3_vl_30b_a3b", "random:qwen2_5_vl_7b"):  # text_config and top-level layouts
        model = build_random_model(name, torch.bfloat16, "meta", vit_backends.create("sdpa"), num_layers=3)
        assert model.spec.num_layers == 3 and len(model.model.language_model.layers) == 3
    with pytest.raises(ModelLoadError, match="num_layers"):
        build_random_model("random:qwen3_vl_8b", torch.bfloat16, "meta", vit_backends.create("sdpa"), num_layers=0)
