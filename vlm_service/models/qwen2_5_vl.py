"""Qwen2.5-VL: the windowed ViT of qwen2_5_vl_vision.py + a Qwen2 text decoder with contiguous 3D MRoPE.

Parameter names mirror transformers-5's state_dict (`model.visual.*`, `model.language_model.*`, `lm_head.weight`),
except q/k/v and gate/up, which are fused (layers.MergedLinear) and filled from the separate checkpoint tensors.
Built as Qwen2_5_VLForConditionalGeneration(config, dtype, device, vit_attention); see registry.py for the contract.
`config` may be loader.normalize_config's output or raw config.json contents (text fields at the top level or in
text_config, rope in rope_parameters or rope_scaling).
"""

from __future__ import annotations

import torch
from torch import nn

import kernels
from kernels.reference import rope_cos_sin_cache
from vit_backends.base import ViTAttention
from vlm_service.errors import ModelLoadError
from vlm_service.models.common import AttentionContext, ModelSpec
from vlm_service.models.layers import MergedLinear, TextModel, VisionLanguageModel, materialize
from vlm_service.models.parallel import TensorParallel, active, head_shard, lm_head, qkv_parts, row_linear
from vlm_service.models.qwen2_5_vl_vision import Qwen2_5_VLVisionTower
from vlm_service.models.vision_graphs import VisionGraphRunner

ARCH = "Qwen2_5_VLForConditionalGeneration"


def text_config(config: dict) -> dict:
    """The text model's fields: text_config over the top level (hub configs keep them at the top)."""
    flat = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
    return {**flat, **(config.get("text_config") or {})}


class TextAttention(nn.Module):
    """GQA with biased q/k/v (fused) and contiguous MRoPE; the KV cache lives in the AttentionContext."""

    def __init__(self, cfg: dict, layer: int, tp: TensorParallel | None = None):
        super().__init__()
        self.layer = layer
        heads = cfg["num_attention_heads"]
        self.head_dim = cfg["hidden_size"] // heads
        # this rank's heads (all of them at TP=1; see models/parallel.py)
        shard = head_shard(heads, cfg.get("num_key_value_heads") or heads, tp)
        self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
        parts, starts = qkv_parts(shard, self.head_dim)
        self.qkv_proj = MergedLinear(cfg["hidden_size"], parts, bias=True, starts=starts if active(tp) else None)
        self.o_proj = row_linear(heads * self.head_dim, cfg["hidden_size"], False, tp)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext, rope) -> torch.Tensor:
        T = x.shape[0]  # x: [T, hidden]
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.sizes, dim=-1)
        q = q.reshape(T, self.num_heads, self.head_dim).contiguous()  # [T, Hq, D]
        k = k.reshape(T, self.num_kv_heads, self.head_dim).contiguous()  # [T, Hk, D]
        v = v.reshape(T, self.num_kv_heads, self.head_dim).contiguous()
        kernels.apply_mrope_(q, k, positions, rope.cache, rope.section, False)
        return self.o_proj(ctx.attend(self.layer, q, k, v).reshape(T, -1))


class _Rope:
    """The text rotary cache [max_pos, D] float32 = [cos | sin] and the contiguous mrope section (t, h, w)."""

    def __init__(self, text: dict, head_dim: int, device):
        rp = text.get("rope_parameters") or text.get("rope_scaling") or {}
        self.section = list(rp.get("mrope_section") or [16, 24, 24])
        if 2 * sum(self.section) != head_dim:
            raise ModelLoadError(f"mrope_section {self.section} does not cover head_dim {head_dim} (sum must be D/2)")
        theta = float(rp.get("rope_theta", text.get("rope_theta", 1000000.0)))
        max_pos = int(text.get("max_position_embeddings", 32768))
        self.cache = rope_cos_sin_cache(head_dim, max_pos, theta, device=device)


class _Inner(nn.Module):
    """`model.*` of the canonical layout: visual + language_model."""

    def __init__(self, config: dict, text: dict, vit_attention: ViTAttention, tp: TensorParallel | None):
        super().__init__()
        self.visual = Qwen2_5_VLVisionTower(config["vision_config"], vit_attention)  # whole on every rank
        self.language_model = TextModel(text, TextAttention, tp)


class Qwen2_5_VLForConditionalGeneration(VisionLanguageModel):
    """Qwen2.5-VL implementing the VLModel protocol (models/common.py)."""

    def __init__(self, config: dict, dtype: torch.dtype, device: torch.device | str, vit_attention: ViTAttention,
                 tp: TensorParallel | None = None):
        super().__init__()
        text = text_config(config)
        self.tp = tp if active(tp) else None
        self.tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
        with torch.device("meta"):
            self.model = _Inner(config, text, vit_attention, self.tp)
            if not self.tied:
                self.lm_head = lm_head(text["hidden_size"], text["vocab_size"], self.tp)
        materialize(self, dtype, torch.device(device))
        attn0 = self.model.language_model.layers[0].self_attn
        self.rope = _Rope(text, attn0.head_dim, device)
        self.spec = _spec(config, text, attn0)
        self.vision_graphs = VisionGraphRunner()

    # ---- weights ----------------------------------------------------------------------------------------------

    def weights_loaded(self) -> None:
        # CUDA only (a cuBLAS alignment matter; on CPU the padded sums round differently from transformers' by
        # ~1e-4, the parity tolerance). After the weights are in: a second load_weights would meet padded shapes.
        for block in self.model.visual.blocks:
            if block.mlp.down_proj.weight.is_cuda:
                block.mlp.pad_intermediate_()

    # ---- VLModel ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """pixel_values [sum patches, C*tp*p*p], grid_thw [n, 3], all in one packed ViT pass
        -> per image (embeds [tokens, hidden], []). A repeated set of grids replays a CUDA graph (vision_graphs.py)."""
        visual, grid = self.model.visual, grid_thw.cpu()
        meta, (merged,) = self.vision_graphs.run(pixel_values, grid.tolist(), visual.backends(),
                                                 lambda: visual.metadata(grid, pixel_values.device), visual.compute)
        return [(e, []) for e in merged.split(meta.sizes)]


def _eos_ids(config: dict, text: dict) -> tuple[int, ...]:
    eos = config.get("eos_token_ids")
    if eos is None:
        eos = text.get("eos_token_id")
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]))


def _spec(config: dict, text: dict, attn: TextAttention) -> ModelSpec:
    vision = config["vision_config"]
    return ModelSpec(
        architecture=ARCH,
        num_layers=text["num_hidden_layers"], num_heads=attn.num_heads, num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim, hidden_size=text["hidden_size"], vocab_size=text["vocab_size"],
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        image_token_id=int(config.get("image_token_id", 151655)),
        vision_start_token_id=int(config.get("vision_start_token_id", 151652)),
        eos_token_ids=_eos_ids(config, text),
        spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
        patch_size=int(vision.get("patch_size", 14)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
    )
