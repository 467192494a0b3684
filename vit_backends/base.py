"""The ViT attention interface: packed varlen, non-causal."""

from __future__ import annotations

import abc

import torch


class ViTAttention(abc.ABC):
    """Attention over packed segments (one per image, frame, or Qwen2.5-VL window).

    q, k, v: [T, H, D] (same head count: ViT attention is MHA); cu_seqlens: int32 [S+1], cu_seqlens[0] == 0,
    cu_seqlens[-1] == T; max_seqlen: the longest segment. Returns [T, H, D]; tokens attend only within their segment.
    """

    name: str = "base"

    @abc.abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        ...

    def __call__(self, q, k, v, cu_seqlens, max_seqlen):
        return self.forward(q, k, v, cu_seqlens, max_seqlen)
