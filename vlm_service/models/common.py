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


class StoringAttentionContext(AttentionContext, Protocol):
    """A context that lets the model write k/v into its cache itself (a kernel that fuses the store into the op
    making k, e.g. kernels.qk_norm_mrope_store): `store_target(layer)` -> (kv_cache [num_blocks, 2, block_size,
    Hk, D], slot_mapping [T]); `attend_stored(layer, q)` then attends as `attend` would, with k/v already stored
    (into `out` [T, Hq, D] when given: a static buffer of engine/prefill_graphs.py)."""

    def store_target(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    def attend_stored(self, layer: int, q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        ...


@dataclass
class MultimodalEmbeds:
    """Visual-item embeddings (images, video frames) for the image / video pad positions of this step's tokens.

    embeds [N, hidden] goes where mask [T] is True (N == mask.sum()), in order. deepstack (Qwen3-VL) is a list of
    [N, hidden] tensors added after decoder layers 0..len-1 at the same positions. index [N] (int64, optional,
    on the states' device) names the same positions: indexing with it needs no device sync, where a boolean mask
    costs one per use; when it is given, the mask may stay on the host.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    deepstack: list[torch.Tensor] | None = None
    index: torch.Tensor | None = None

    @property
    def where(self) -> torch.Tensor:
        """What to index the [T, hidden] states with: `index` when given, else `mask`."""
        return self.index if self.index is not None else self.mask


@dataclass(frozen=True)
class ModelSpec:
    """What the engine, processor and server need to know about a loaded model (derived from config.json)."""

    architecture: str  # "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration", "Qwen3VLMoe..."
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    image_token_id: int
    vision_start_token_id: int
    eos_token_ids: tuple[int, ...]
    spatial_merge_size: int
    patch_size: int
    temporal_patch_size: int


class VLModel(Protocol):
    """The model interface the engine drives (vlm_service/models/qwen2_5_vl.py and qwen3_vl.py implement it)."""

    spec: ModelSpec

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Run the vision tower over several images packed together (one varlen ViT batch).

        pixel_values [sum of patches, C*tp*p*p] (images concatenated in order), grid_thw int64 [n_images, 3].
        Returns, per image, (embeds [tokens, hidden], deepstack list of [tokens, hidden]; empty for Qwen2.5-VL).
        """
        ...

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext,
                mm: MultimodalEmbeds | None = None) -> torch.Tensor:
        """input_ids [T] int64 (flattened batch), positions [3, T] int64 -> final hidden states [T, hidden]
        (after the last norm)."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> logits [B, vocab] float32."""
        ...
