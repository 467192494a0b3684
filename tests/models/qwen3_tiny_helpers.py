"""Tiny Qwen3-VL checkpoints built with transformers' own classes, and helpers to feed both implementations.

A uniquely named module (not conftest): test modules import from it, and several test folders have a conftest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlm_service.models.layers import seeded_weights_

IMAGE, VIDEO, VSTART, VEND = 500, 501, 502, 503
PATCH_DIM = 3 * 2 * 16 * 16


def tiny_qwen3_config(**overrides):
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    kw = dict(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
              vision_start_token_id=VSTART, vision_end_token_id=VEND)
    kw.update(overrides)
    return Qwen3VLConfig(**kw)


def randomize_(model, seed: int = 0) -> None:
    """Every weight random (norm weights around 1, biases nonzero) so each tensor affects the output."""
    seeded_weights_(model, seed, matrix=0.06, norm=0.1, bias=0.05)


def build_tiny_qwen3(out_dir: Path, seed: int = 0, **overrides) -> Path:
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_qwen3_config(**overrides)).eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def make_prompt(parts, seed: int = 0):
    """parts: ints (that many random text tokens) or (h, w) patch grids (an image). Returns ids [T], mm types [T],
    pixel_values [N, PATCH_DIM] or None, grid_thw [n, 3] or None."""
    gen = torch.Generator().manual_seed(seed)
    ids, types, pixels, grids = [], [], [], []
    for part in parts:
        if isinstance(part, int):
            ids += torch.randint(0, 480, (part,), generator=gen).tolist()
            types += [0] * part
            continue
        h, w = part
        n = h * w // 4
        ids += [VSTART] + [IMAGE] * n + [VEND]
        types += [0] + [1] * n + [0]
        pixels.append(torch.randn(h * w, PATCH_DIM, generator=gen))
        grids.append([1, h, w])
    pv = torch.cat(pixels) if pixels else None
    grid = torch.tensor(grids, dtype=torch.long) if grids else None
    return torch.tensor(ids), torch.tensor(types), pv, grid


def hf_positions(hf_model, ids, types, grid):
    """transformers' MRoPE positions [3, T] and delta for one prompt."""
    if grid is None:
        pos = torch.arange(ids.shape[0]).expand(3, -1)
        return pos, 0
    pos, delta = hf_model.model.get_rope_index(ids[None], types[None], image_grid_thw=grid)
    return pos[:, 0], int(delta)
