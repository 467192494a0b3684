"""torch scaled_dot_product_attention: any device, the reference backend.

Segments of equal length are attended in ONE batched sdpa call ([n, H, L, D]), so Qwen2.5-VL's hundreds of
windows (almost all 64 tokens) cost a handful of calls instead of a Python loop over every window. A group whose
segments lie back to back is a zero-copy view; otherwise its tokens are gathered with one index and scattered back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vit_backends.base import PerTensorCache, ViTAttention


def length_groups(bounds: list[int]) -> dict[int, list[int]]:
    """Segment start offsets grouped by segment length (empty segments dropped); bounds = cu_seqlens as a list."""
    groups: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            groups.setdefault(end - start, []).append(start)
    return groups


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q, k, v: [n, L, H, D] -> sdpa on [n, H, L, D] -> [n, L, H, D]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _is_run(starts: list[int], length: int) -> bool:
    """True when the segments are consecutive in memory: start_i = start_0 + i * length."""
    return starts[-1] - starts[0] == (len(starts) - 1) * length and \
        all(b - a == length for a, b in zip(starts[:-1], starts[1:]))


class Group(NamedTuple):
    """Segments of one length: n of them, either back to back from `start` or gathered by `index` [n*L]."""
    length: int
    n: int
    start: int
    index: torch.Tensor | None


def make_groups(cu_seqlens: torch.Tensor) -> list[Group]:
    """The batched sdpa calls for cu_seqlens (one host sync)."""
    groups = []
    for length, starts in length_groups(cu_seqlens.tolist()).items():
        if _is_run(starts, length):
            groups.append(Group(length, len(starts), starts[0], None))
            continue
        base = torch.tensor(starts, device=cu_seqlens.device)[:, None]
        index = (base + torch.arange(length, device=cu_seqlens.device)[None, :]).reshape(-1)  # [n*L]
        groups.append(Group(length, len(starts), starts[0], index))
    return groups


class SdpaAttention(ViTAttention):
    """Packed varlen attention through torch sdpa, one call per distinct segment length."""

    name = "sdpa"

    def __init__(self):
        self._groups = PerTensorCache()

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        tokens, heads, dim = q.shape  # [T, H, D]
        out = torch.empty_like(q)
        for length, n, start, index in self._groups.get(cu_seqlens, None, lambda: make_groups(cu_seqlens)):
            if index is None:
                span = slice(start, start + n * length)
                view = [t[span].reshape(n, length, heads, dim) for t in (q, k, v)]  # [n, L, H, D]
                out[span] = _attend(*view).reshape(n * length, heads, dim)
            else:
                view = [t.index_select(0, index).view(n, length, heads, dim) for t in (q, k, v)]
                out.index_copy_(0, index, _attend(*view).reshape(n * length, heads, dim))
        return out
