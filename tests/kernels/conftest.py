"""Kernel tests: Triton bodies run on CPU tensors only under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 where CUDA is absent). On a GPU host those tests skip and the @pytest.mark.gpu ones run."""

import os

import pytest
import torch

from moe_helpers import moe_weights


@pytest.fixture
def interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (the gpu-marked tests cover CUDA)")


@pytest.fixture(scope="module")
def qwen3_moe_weights():
    """Qwen3-VL-30B-A3B's expert weights (E=128, H=2048, I=768, bf16) on CUDA, for the gpu-marked MoE tests."""
    return moe_weights(128, 2048, 768, torch.bfloat16, device="cuda")
