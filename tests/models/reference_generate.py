"""A dense one-sequence KV context and a plain generation loop: enough to produce tokens from a VLModel and to test
models against transformers. The engine (paged cache, batching) replaces both in serving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from vlm_service.models.common import MultimodalEmbeds


class DenseKVContext:
    """AttentionContext over a contiguous cache for ONE sequence: k, v [layers, max_len, Hk, D], causal."""

    def __init__(self, num_layers: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        self.k = torch.zeros(num_layers, max_len, num_kv_heads, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.lengths = [0] * num_layers

    @classmethod
    def for_model(cls, model, max_len: int) -> "DenseKVContext":
        spec, p = model.spec, next(model.parameters())
        return cls(spec.num_layers, max_len, spec.num_kv_heads, spec.head_dim, p.dtype, p.device)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hk, D] (the next T tokens) -> [T, Hq, D]."""
        start, T = self.lengths[layer], q.shape[0]
        end = start + T
        if end > self.k.shape[1]:
            raise ValueError(f"DenseKVContext full: {end} tokens > max_len {self.k.shape[1]}")
        self.k[layer, start:end], self.v[layer, start:end] = k, v
        self.lengths[layer] = end
        rep = q.shape[1] // k.shape[1]
        keys = self.k[layer, :end].repeat_interleave(rep, dim=1)  # [S, Hq, D]
        vals = self.v[layer, :end].repeat_interleave(rep, dim=1)
        # query i sits at sequence index start + i and sees keys 0..start+i
        mask = torch.arange(end, device=q.device)[None, :] <= (start + torch.arange(T, device=q.device))[:, None]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), keys.transpose(0, 1), vals.transpose(0, 1),
                                             attn_mask=mask)
        return out.transpose(0, 1)


def multimodal_embeds(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                      grid_thw: torch.Tensor | None) -> MultimodalEmbeds | None:
    """Encode the images and place them at the image-pad positions of input_ids [T] (None without images)."""
    if pixel_values is None:
        return None
    per_image = model.encode_images(pixel_values, grid_thw)
    embeds = torch.cat([e for e, _ in per_image])
    depth = len(per_image[0][1])
    deepstack = [torch.cat([ds[i] for _, ds in per_image]) for i in range(depth)] or None
    mask = input_ids == model.spec.image_token_id
    if int(mask.sum()) != embeds.shape[0]:
        raise ValueError(f"{int(mask.sum())} image-pad tokens but {embeds.shape[0]} image embeddings")
    return MultimodalEmbeds(embeds=embeds, mask=mask, deepstack=deepstack)


def _next_token(logits: torch.Tensor, temperature: float, seed: int, position: int) -> int:
    if temperature <= 0:
        return int(logits.argmax(-1))
    seeds = torch.tensor([seed], device=logits.device)
    pos = torch.tensor([position], device=logits.device)
    return int(kernels.gumbel_sample(logits / temperature, seeds, pos)[0])


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, positions: torch.Tensor, mrope_delta: int | None = None,
             pixel_values: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None,
             max_new_tokens: int = 16, temperature: float = 0.0, seed: int = 0, min_tokens: int = 0,
             eos_token_ids: tuple[int, ...] | None = None) -> list[int]:
    """Prefill input_ids [T] at MRoPE positions [3, T], then decode up to max_new_tokens; returns the new ids.

    Decode token n (sequence index T + n) sits at position T + n + mrope_delta on all three axes; mrope_delta
    defaults to max(positions) + 1 - T. Greedy when temperature <= 0, else seeded Gumbel-max. EOS ids (default:
    the model's) are suppressed until min_tokens are out; generation stops after emitting one.
    """
    device = next(model.parameters()).device
    input_ids, positions = input_ids.to(device), positions.to(device)
    T = input_ids.shape[0]
    delta = int(positions.max()) + 1 - T if mrope_delta is None else mrope_delta
    eos = tuple(model.spec.eos_token_ids if eos_token_ids is None else eos_token_ids)
    ctx = DenseKVContext.for_model(model, T + max_new_tokens)
    hidden = model.forward(input_ids, positions, ctx, multimodal_embeds(model, input_ids, pixel_values, grid_thw))
    out: list[int] = []
    for n in range(max_new_tokens):
        logits = model.compute_logits(hidden[-1:])  # [1, V]
        if len(out) < min_tokens and eos:
            logits[:, list(eos)] = float("-inf")
        token = _next_token(logits, temperature, seed, T + n)
        out.append(token)
        if token in eos or n == max_new_tokens - 1:
            break
        pos = torch.full((3, 1), T + n + delta, dtype=torch.long, device=device)
        hidden = model.forward(torch.tensor([token], device=device), pos, ctx)
    return out
