"""Session fixtures: a tiny Qwen3-VL checkpoint and both implementations loaded from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwen3_tiny_helpers import build_tiny_qwen3  # noqa: F401  (fixtures below use it)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="session")
def hf_qwen3(tiny_qwen3_dir):
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def our_qwen3(tiny_qwen3_dir):
    import vit_backends
    from vlm_service.models.loader import load_model

    return load_model(tiny_qwen3_dir, torch.float32, torch.device("cpu"), vit_backends.create("sdpa"))


