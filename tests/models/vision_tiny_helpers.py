"""Tiny random vision towers and models of both architectures, for the metadata/compute split and CUDA-graph tests.

A uniquely named module (not conftest): test modules import from it, and several test folders have a conftest."""

from __future__ import annotations

import torch

from vlm_service.models.layers import seeded_weights_
from vlm_service.models.loader import normalize_config
from vlm_service.models.qwen2_5_vl_vision import Qwen2_5_VLVisionTower
from vlm_service.models.qwen3_vl_vision import Qwen3VLVisionTower
from vlm_service.models.registry import model_class

QWEN25_VISION = dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=14, spatial_merge_size=2,
                     temporal_patch_size=2, window_size=56, out_hidden_size=64, fullatt_block_indexes=[1, 3])
QWEN3_VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                    temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                    deepstack_visual_indexes=[0, 1])
PATCH_DIM = {"qwen2_5_vl": 3 * 2 * 14 * 14, "qwen3_vl": 3 * 2 * 16 * 16}

# several images, non-square, windows clipped at the edges (Qwen2.5-VL windows are 2x2 merged units here), two frames
GRIDS = {
    "one_image": [[1, 4, 6]],
    "two_non_square": [[1, 6, 4], [1, 2, 10]],
    "three_clipped_windows": [[1, 8, 6], [1, 4, 4], [1, 2, 2]],
    "two_frames": [[2, 6, 6]],
}

_TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6)
RAW_CONFIGS = {
    "qwen2_5_vl": {"architectures": ["Qwen2_5_VLForConditionalGeneration"], **_TEXT, "rope_theta": 10000.0,
                   "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "vision_config": QWEN25_VISION},
    "qwen3_vl": {"architectures": ["Qwen3VLForConditionalGeneration"],
                 "text_config": {**_TEXT, "rope_parameters": {"rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                                              "mrope_interleaved": True}},
                 "vision_config": QWEN3_VISION},
}


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random (norms around one, biases nonzero), so every tensor moves the output."""
    seeded_weights_(module, seed, matrix=0.1, norm=0.1, bias=0.05)


def tiny_tower(arch: str, backend, dtype=torch.float32, device="cpu", seed: int = 0):
    """A random vision tower of `arch` ("qwen2_5_vl" | "qwen3_vl") on `device`."""
    if arch == "qwen2_5_vl":
        tower = Qwen2_5_VLVisionTower(QWEN25_VISION, backend)
    else:
        tower = Qwen3VLVisionTower(QWEN3_VISION, backend)
    tower = tower.to(device=device, dtype=dtype)
    randomize_(tower, seed)
    if arch == "qwen3_vl":
        tower.build_caches(torch.device(device))
    return tower.eval()


def tiny_model(arch: str, backend, dtype=torch.float32, device="cpu", seed: int = 0):
    """A whole random model of `arch` (one text layer): its encode_images is what the engine calls."""
    config = normalize_config(RAW_CONFIGS[arch])
    model = model_class(config["architectures"][0])(config, dtype, torch.device(device), backend)
    randomize_(model, seed)
    return model.eval()


def pixels_for(arch: str, grid: list[list[int]], seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Random pixel_values [sum t*h*w, C*tp*p*p] for the grids."""
    n = sum(t * h * w for t, h, w in grid)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, PATCH_DIM[arch], generator=gen).to(device=device, dtype=dtype)
