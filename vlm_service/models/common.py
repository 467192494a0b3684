"""What the model code needs from the outside, as small protocols, so models import nothing from engine/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class AttentionContext(Protocol):
    """Causal self-attention of the text decoder over a KV cache the caller owns.

    The model calls `attend` once per layer with this step's new tokens (flattened over the batch, after rotary):
    q [T, Hq, D], k/v [T, Hk, D]. The context stores k/v in its cache and returns attention output [T, Hq, D] where
    each token attends to every earlier token of its own sequence (cache plus new tokens, causal).
    """

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ...


@dataclass
class MultimodalEmbeds:
    """Image embeddings for the image-pad positions of this step's tokens.

    embeds [N, hidden] goes where mask [T] is True (N == mask.sum()), in order. deepstack (Qwen3-VL) is a list of
    [N, hidden] tensors added after decoder layers 0..len-1 at the same positions.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    deepstack: list[torch.Tensor] | None = None
