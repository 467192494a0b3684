"""torch scaled_dot_product_attention: any device, the reference backend.

Segments of equal length are attended in ONE batched sdpa call ([n, H, L, D]), so Qwen2.5-VL's hundreds of
windows (almost all 64 tokens) cost a handful of calls instead of a Python loop over every window. A group whose
segments lie back to back is a zero-copy view; otherwise its tokens are gathered with one index and scattered back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vit_backends.base import ViTAttention


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


class SdpaAttention(ViTAttention):
    """Packed varlen attention through torch sdpa, one call per distinct segment length."""

    name = "sdpa"

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        tokens, heads, dim = q.shape  # [T, H, D]
        out = torch.empty_like(q)
        for length, starts in length_groups(cu_seqlens.tolist()).items():
            n = len(starts)
            if _is_run(starts, length):
                span = slice(starts[0], starts[0] + n * length)
                view = [t[span].reshape(n, length, heads, dim) for t in (q, k, v)]  # [n, L, H, D]
                out[span] = _attend(*view).reshape(n * length, heads, dim)
                continue
            base = torch.tensor(starts, device=q.device)[:, None]
            idx = (base + torch.arange(length, device=q.device)[None, :]).reshape(-1)  # [n*L]
            view = [t.index_select(0, idx).view(n, length, heads, dim) for t in (q, k, v)]
            out.index_copy_(0, idx, _attend(*view).reshape(n * length, heads, dim))
        return out
