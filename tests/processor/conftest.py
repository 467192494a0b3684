"""Fixtures of the processor tests: demo checkpoint directories (tokenizer + preprocessor config)."""

import pytest

from vlm_service.processor.tokenizer import build_demo_tokenizer
from vlm_service.processor.family_rules import write_preprocessor_config

ARCHS = ("qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="session", params=ARCHS)
def model_dir(request, tmp_path_factory):
    """A checkpoint directory with the demo tokenizer and the demo image config of one architecture."""
    out = tmp_path_factory.mktemp(request.param)
    build_demo_tokenizer(out)
    write_preprocessor_config(out, request.param)
    return out
