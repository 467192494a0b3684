"""gpu_ops on CPU tensors against the PIL path: the resize within one level, everything after it bit-exact."""

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_corpus import real_looking
from vlm_service.processor import gpu_ops
from vlm_service.processor.vision import ImageConfig, preprocess_image, smart_resize
from vlm_service.processor.family_rules import demo_image_config

CONFIGS = {"qwen2_5_demo": ImageConfig.from_dict(demo_image_config("qwen2_5_vl")),
           "qwen3_demo": ImageConfig.from_dict(demo_image_config("qwen3_vl")),
           "qwen2_5_mid": ImageConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 600)}
# odd sizes, up- and down-scaling, thin images of aspect ratio up to 200 (both orientations)
SIZES = [(333, 517), (57, 91), (4, 800), (800, 4), (31, 29), (600, 12), (5, 700), (224, 448)]


def _chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_resize_within_one_level_of_pil(cfg_name):
    # Measured on this CPU: 0.03 % of values off by one over a similar corpus, never more than one level.
    cfg = CONFIGS[cfg_name]
    off = total = 0
    for k, (h, w) in enumerate(SIZES):
        px = real_looking(h, w, seed=k)
        th, tw = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        want = np.asarray(Image.fromarray(px).resize((tw, th), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
        got = gpu_ops.resize_like_pil(_chw(px), (th, tw))
        assert got.shape == (3, th, tw) and got.dtype == torch.float32
        diff = np.abs(got.numpy().astype(np.int32) - want.astype(np.int32))
        assert diff.max() <= 1, ((h, w), diff.max())
        off, total = off + int((diff > 0).sum()), total + diff.size
    assert off / total < 0.005, off / total


def test_resize_keeps_an_image_already_on_the_grid():
    px = real_looking(56, 84, seed=3)
    got = gpu_ops.resize_like_pil(_chw(px), (56, 84))
    assert torch.equal(got, _chw(px).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_normalize_and_patchify_bit_exact_on_the_same_resized_pixels(cfg_name, dtype):
    cfg = CONFIGS[cfg_name]
    for k, (h, w) in enumerate([(333, 517), (4, 800), (64, 64)]):
        img = Image.fromarray(real_looking(h, w, seed=10 + k))
        want, want_grid = preprocess_image(img, cfg, dtype)
        th, tw = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        resized = np.asarray(img.resize((tw, th), Image.Resampling.BICUBIC))  # PIL's pixels, as the CPU path
        table = gpu_ops.value_table(cfg, dtype, "cpu")
        got, grid = gpu_ops.patchify(gpu_ops.normalize(_chw(resized), table), cfg)
        assert grid == want_grid and got.dtype == dtype
        assert torch.equal(got.view(torch.int16) if dtype != torch.float32 else got,
                           want.view(torch.int16) if dtype != torch.float32 else want)


def test_patchify_layout_is_merge_block_order():
    # a [1, 4p, 4p] image of distinct values: row r of the output must be the patch at merge-block order r
    cfg = ImageConfig(patch_size=2, merge_size=2, temporal_patch_size=2, min_pixels=4, max_pixels=10**6)
    values = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    out, grid = gpu_ops.patchify(values, cfg)
    assert grid == (1, 4, 4) and out.shape == (16, 3 * 2 * 2 * 2)
    # row 2 = block (0, 0), in-block (1, 0): patch rows 2..3, cols 0..1; both temporal copies equal
    patch = values[:, 2:4, 0:2]
    assert torch.equal(out[2].view(3, 2, 2, 2), patch[:, None].expand(3, 2, 2, 2))
    # row 4 = block (0, 1), in-block (0, 0): patch rows 0..1, cols 4..5
    assert torch.equal(out[4].view(3, 2, 2, 2)[:, 0], values[:, 0:2, 4:6])


def test_preprocess_pixels_close_to_the_cpu_path():
    cfg = CONFIGS["qwen2_5_mid"]
    img = Image.fromarray(real_looking(333, 517, seed=5))
    want, want_grid = preprocess_image(img, cfg)
    got, grid = gpu_ops.preprocess_pixels(_chw(np.asarray(img)), cfg, gpu_ops.value_table(cfg, torch.float32, "cpu"))
    assert grid == want_grid
    step = 1 / (255 * min(cfg.image_std))  # one level after normalise
    assert (got - want).abs().max().item() <= step * 1.001
