"""The vision tower across tensor-parallel ranks. Every rank holds the whole tower (it is small next to the text
decoder: 0.67B of Qwen2.5-VL-72B's 73B), so there are two ways to run it:
- data (default, as vLLM's mm_encoder_tp_mode=data): the step's images are split into contiguous shares of about
  equal patch counts, each rank encodes its share, and an all-gather puts every embedding on every rank;
- replicate: rank 0 encodes every image alone (no collective; the fallback, and what a single image does anyway).
"""

from __future__ import annotations

import torch

from vlm_service.engine.parallel.group import fatal_to_group
from vlm_service.models.parallel import TensorParallel


def shares(patches: list[int], size: int) -> list[tuple[int, int]]:
    """Contiguous image ranges [a, b) per rank with about equal patch sums (some may be empty)."""
    total, bounds, start, acc = sum(patches), [], 0, 0
    for r in range(size):
        end = start
        while end < len(patches) and (acc + patches[end] <= total * (r + 1) / size or end == start):
            acc += patches[end]
            end += 1
        if r == size - 1:
            end = len(patches)
        bounds.append((start, end))
        start = end
    return bounds


def deepstack_count(model) -> int:
    """How many deepstack features the tower returns per image (0 for Qwen2.5-VL)."""
    visual = getattr(getattr(model, "model", None), "visual", None)
    return len(getattr(visual, "deepstack_indexes", None) or [])


def encode_shared(model, pixels: torch.Tensor, grid: torch.Tensor, tp: TensorParallel):
    """Every rank: encode this rank's share of the images, all-gather -> per image (embeds, deepstack), as
    encode_images returns them. pixels [sum patches, C*tp*p*p], grid [n, 3] (host)."""
    spec, k = model.spec, deepstack_count(model)
    rows = grid.tolist()
    patches = [t * h * w for t, h, w in rows]
    tokens = [p // spec.spatial_merge_size ** 2 for p in patches]
    bounds = shares(patches, tp.size)
    a, b = bounds[tp.rank]
    width = spec.hidden_size * (1 + k)
    local = pixels.new_zeros((0, width))
    if b > a:
        start = sum(patches[:a])
        mine = model.encode_images(pixels[start:start + sum(patches[a:b])], grid[a:b])
        local = torch.cat([torch.cat([e, *d], dim=-1) for e, d in mine])  # [tokens of the share, (1+k)*hidden]
    counts = [sum(tokens[x:y]) for x, y in bounds]
    full = tp.all_gather_rows(local.to(pixels.dtype), counts)
    out = []
    for piece in full.split(tokens):
        cols = piece.split(spec.hidden_size, dim=-1)
        out.append((cols[0], list(cols[1:])))
    return out


class Rank0Model:
    """The model as rank 0's runner sees it: everything is the local shard's, except encode_images, which in
    `data` mode first sends the images to the workers and encodes its own share (vision.encode_shared)."""

    def __init__(self, model, channel, mode: str, on_error=lambda: None):
        # on_error() -> the runner's failure callback (group.fatal_to_group)
        self.__dict__.update(_model=model, _channel=channel, _mode=mode, _on_error=on_error)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode_images(self, pixels: torch.Tensor, grid: torch.Tensor):
        if self._mode != "data" or grid.shape[0] < 2:
            return self._model.encode_images(pixels, grid)
        with fatal_to_group(self._on_error(), "vision encode"):
            self._channel.send("encode", {"grid": grid.tolist()}, (pixels,))
            return encode_shared(self._model, pixels, grid, self._channel.tp)
