"""Kernel tests: Triton bodies run on CPU tensors only under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 where CUDA is absent). On a GPU host those tests skip and the @pytest.mark.gpu ones run."""

import os

import pytest


@pytest.fixture
def interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (the gpu-marked tests cover CUDA)")
