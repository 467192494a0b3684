import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from proc_images import random_image
from vlm_service.processor import vision
from vlm_service.processor.vision import ImageConfig, preprocess_image, smart_resize
from vlm_service.processor.family_rules import demo_image_config, write_preprocessor_config

# Settings as the real checkpoints write them: Qwen2.5-VL (min/max_pixels, CLIP stats) and Qwen3-VL (size dict).
QWEN2_5_VL_HUB = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                  "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711]}
QWEN3_VL_HUB = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
CONFIGS = {"qwen2_5_hub": QWEN2_5_VL_HUB, "qwen3_hub": QWEN3_VL_HUB,
           "qwen2_5_demo": demo_image_config("qwen2_5_vl"), "qwen3_demo": demo_image_config("qwen3_vl")}


def _hf_image_processor(cfg: dict) -> Qwen2VLImageProcessorPil:
    kw = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in ("image_processor_type", "processor_class")}
    return Qwen2VLImageProcessorPil(**kw)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("size", [(37, 53), (300, 170), (613, 29), (64, 64)])
def test_pixel_values_identical_to_transformers(name, size):
    img = random_image(*size, seed=sum(size))
    ours, grid = preprocess_image(img, ImageConfig.from_dict(CONFIGS[name]))
    ref = _hf_image_processor(CONFIGS[name])(images=[img], return_tensors="pt")
    assert [list(grid)] == ref["image_grid_thw"].tolist()
    assert ours.dtype == torch.float32
    assert torch.equal(ours, ref["pixel_values"])


@pytest.mark.parametrize("name", ["qwen2_5_hub", "qwen3_hub"])
@pytest.mark.parametrize("size", [(1024, 1024), (1500, 701), (640, 1900)])
def test_large_images_identical_to_transformers(name, size, monkeypatch):
    # large enough that the resize, the value lookup and the layout run in bands (1024x1024 -> 1036x1036 for p=14)
    run_bands = vision._run_bands
    banded = []
    monkeypatch.setattr(vision, "_run_bands", lambda fn, spans: (banded.append(len(spans)), run_bands(fn, spans)))
    monkeypatch.setattr(vision, "BAND_THREADS", 4)
    img = random_image(*size, seed=sum(size))
    ours, grid = preprocess_image(img, ImageConfig.from_dict(CONFIGS[name]))
    ref = _hf_image_processor(CONFIGS[name])(images=[img], return_tensors="pt")
    assert [list(grid)] == ref["image_grid_thw"].tolist()
    assert torch.equal(ours, ref["pixel_values"])
    assert banded and max(banded) == 4


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), factor=st.sampled_from([28, 32]),
       lo=st.integers(1, 50_000), span=st.integers(0, 5_000_000))
def test_smart_resize_matches_transformers(h, w, factor, lo, span):
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError):
            smart_resize(h, w, factor, lo, lo + span)
        return
    assert smart_resize(h, w, factor, lo, lo + span) == hf_smart_resize(h, w, factor, lo, lo + span)


def test_config_forms(tmp_path):
    qwen3 = ImageConfig.from_dict(QWEN3_VL_HUB)
    assert (qwen3.min_pixels, qwen3.max_pixels, qwen3.factor) == (65536, 16777216, 32)
    override = ImageConfig.from_dict({**QWEN3_VL_HUB, "min_pixels": 1024, "max_pixels": 4096})
    assert (override.min_pixels, override.max_pixels) == (1024, 4096)
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": QWEN2_5_VL_HUB}))
    assert ImageConfig.from_pretrained(tmp_path) == ImageConfig.from_dict(QWEN2_5_VL_HUB)
    write_preprocessor_config(tmp_path, "qwen3_vl")
    assert ImageConfig.from_pretrained(tmp_path).patch_size == 16
    with pytest.raises(ValueError):
        ImageConfig.from_dict({"min_pixels": 100, "max_pixels": 10})


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_demo_config_bounds_tokens(arch):
    cfg = ImageConfig.from_dict(demo_image_config(arch))
    for size in [(4, 4), (4, 800), (4000, 3000), (1920, 1080)]:
        _, (t, h, w) = preprocess_image(random_image(*size), cfg)
        assert 1 <= t * h * w // 4 <= 64


def test_patch_layout_groups_merge_blocks():
    """Rows 0..3 are one 2x2 merge block: patches (0,0), (0,1), (1,0), (1,1) of the patch grid."""
    cfg = ImageConfig(patch_size=2, merge_size=2, min_pixels=16, max_pixels=64, do_normalize=False, do_rescale=False)
    arr = np.arange(8 * 8, dtype=np.uint8).reshape(8, 8)
    img = __import__("PIL.Image", fromlist=["Image"]).fromarray(np.stack([arr] * 3, -1))
    values, grid = preprocess_image(img, cfg)
    assert grid == (1, 4, 4)
    first_pixel = values[:, 0].reshape(-1).tolist()  # channel 0, time 0, patch pixel (0, 0) of each row
    assert first_pixel[:4] == [0, 2, 16, 18] and first_pixel[4:6] == [4, 6]
    assert math.prod(values.shape) == 16 * 3 * 2 * 2 * 2


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pixels_in_the_model_dtype_equal_the_float32_ones_cast(name, dtype):
    # what a CUDA server asks for (the model dtype, written by the layout copy) must be float32's values, cast
    img = random_image(300, 170, seed=5)
    cfg = ImageConfig.from_dict(CONFIGS[name])
    ref, grid = preprocess_image(img, cfg)
    ours, grid2 = preprocess_image(img, cfg, out_dtype=dtype)
    assert ours.dtype == dtype and grid2 == grid and torch.equal(ours, ref.to(dtype))
