"""Fixtures of the processor tests: demo checkpoint directories (tokenizer + preprocessor config) and PIL images."""

import io

import numpy as np
import pytest
from PIL import Image

from vlm_service.processor.tokenizer import build_demo_tokenizer
from vlm_service.processor.vision import write_preprocessor_config

ARCHS = ("qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="session", params=ARCHS)
def model_dir(request, tmp_path_factory):
    """A checkpoint directory with the demo tokenizer and the demo image config of one architecture."""
    out = tmp_path_factory.mktemp(request.param)
    build_demo_tokenizer(out)
    write_preprocessor_config(out, request.param)
    return out


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def encode(img: Image.Image, fmt: str = "PNG", **save_kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kw)
    return buf.getvalue()
