"""kernels.jit: cache location and lazy optional imports (CPU); real compiles under @pytest.mark.gpu."""

import importlib.util

import pytest
import torch

from kernels import jit


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VLM_KERNEL_CACHE", str(tmp_path / "k"))
    assert jit.cache_dir() == tmp_path / "k"
    monkeypatch.delenv("VLM_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jit.cache_dir() == tmp_path / "vlm-service" / "kernels"


@pytest.mark.skipif(importlib.util.find_spec("flashinfer") is not None, reason="flashinfer is installed")
def test_missing_flashinfer_names_the_extra():
    jit.flashinfer_norm.cache_clear()
    with pytest.raises(RuntimeError, match=r"vlm-service\[gpu\]"):
        jit.flashinfer_norm()


@pytest.mark.gpu
def test_gpu_flashinfer_norm_module_runs():
    pytest.importorskip("flashinfer")
    jit.warm_up_flashinfer_norm(3584)
    x = torch.randn(4, 3584, dtype=torch.bfloat16, device="cuda")
    out = jit.flashinfer_norm().rmsnorm(x, torch.ones(3584, dtype=torch.bfloat16, device="cuda"), 1e-6)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
