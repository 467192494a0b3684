"""cu_seqlens of real Qwen-VL ViT workloads, for tests and benchmarks (the models build their own).

Qwen2.5-VL: patch 14, 2x2 merge, window attention over 112 px windows = 4x4 merged units = 64 patches (edge windows
smaller) in most layers, full attention (one segment per image) in a few. Qwen3-VL: patch 16, full attention only.
"""

from __future__ import annotations

import torch


def patch_grid(side: int, patch: int, merge: int = 2) -> int:
    """Patches per side after Qwen's resize to a multiple of patch * merge (nearest, at least one unit)."""
    factor = patch * merge
    return max(1, round(side / factor)) * merge


def window_lengths(grid_h: int, grid_w: int, window: int = 4, merge: int = 2) -> list[int]:
    """Qwen2.5-VL window segment lengths (in patches) of one image, windows in row-major order."""
    mh, mw = grid_h // merge, grid_w // merge  # merged units per side
    return [min(window, mh - r) * min(window, mw - c) * merge * merge
            for r in range(0, mh, window) for c in range(0, mw, window)]


def cu_seqlens(lengths: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """int32 [S+1] prefix sums of segment lengths."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def qwen25_layers(sides: list[int]) -> dict[str, list[int]]:
    """Segment lengths of Qwen2.5-VL for square images: {"window": [...], "full": [...]}."""
    grids = [patch_grid(s, 14) for s in sides]
    return {"window": [n for g in grids for n in window_lengths(g, g)], "full": [g * g for g in grids]}


def qwen3_layers(sides: list[int]) -> dict[str, list[int]]:
    """Segment lengths of Qwen3-VL for square images: {"full": [...]} (one segment per image)."""
    return {"full": [patch_grid(s, 16) ** 2 for s in sides]}
