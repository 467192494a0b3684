"""Device/dtype/model-name resolution of runtime.py (no model is loaded here)."""

from __future__ import annotations

import pytest
import torch

from vlm_service.config import Config, ModelConfig, ServerConfig
from vlm_service.runtime import resolve_device, resolve_dtype, resolve_model_path


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_model_directory_must_exist(tmp_path):
    cfg = Config(model=ModelConfig(model=str(tmp_path / "nope")), server=ServerConfig(state_dir=tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        resolve_model_path(cfg)
    cfg = Config(model=ModelConfig(model=str(tmp_path)), server=ServerConfig(state_dir=tmp_path))
    assert resolve_model_path(cfg) == (str(tmp_path), tmp_path, tmp_path)
