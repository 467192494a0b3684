"""Qwen3-VL (dense): vision tower with deepstack mergers + text decoder with interleaved MRoPE.

Parameter names mirror transformers-5's state_dict (the canonical layout), except q/k/v and gate/up, which are fused
(MergedLinear) and filled from the separate checkpoint tensors. Built as Qwen3VLForConditionalGeneration(config,
dtype, device, vit_attention) with config from loader.normalize_config; see registry.py for the contract.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels
from kernels.reference import rope_cos_sin_cache
from vlm_service.models.common import AttentionContext, ModelSpec
from vlm_service.models.layers import MergedLinear, MLPFactory, RMSNorm, TextModel, VisionLanguageModel, materialize
from vlm_service.models.parallel import TensorParallel, active, head_shard, lm_head, qkv_parts, row_linear
from vlm_service.models.qwen3_vl_vision import Qwen3VLVisionTower
from vlm_service.models.vision_graphs import VisionGraphRunner


class TextAttention(nn.Module):
    """GQA with per-head q/k RMSNorm and interleaved MRoPE; the cache lives in the AttentionContext."""

    def __init__(self, cfg: dict, layer: int, tp: TensorParallel | None = None):
        super().__init__()
        self.layer = layer
        heads = cfg["num_attention_heads"]
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        # this rank's heads (all of them at TP=1; see models/parallel.py)
        shard = head_shard(heads, cfg["num_key_value_heads"], tp)
        self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
        parts, starts = qkv_parts(shard, self.head_dim)
        bias = bool(cfg.get("attention_bias", False))
        self.qkv_proj = MergedLinear(cfg["hidden_size"], parts, bias, starts=starts if active(tp) else None)
        self.o_proj = row_linear(heads * self.head_dim, cfg["hidden_size"], bias, tp)
        self.q_norm = RMSNorm(self.head_dim, cfg.get("rms_norm_eps", 1e-6))
        self.k_norm = RMSNorm(self.head_dim, cfg.get("rms_norm_eps", 1e-6))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext, rope) -> torch.Tensor:
        T = x.shape[0]  # x: [T, hidden]
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.sizes, dim=-1)
        q = q.reshape(T, self.num_heads, self.head_dim)
        k = k.reshape(T, self.num_kv_heads, self.head_dim)
        v = v.reshape(T, self.num_kv_heads, self.head_dim)  # strided views: the kernels take any token/head strides
        norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, positions, rope.cache, rope.section, True)
        target = getattr(ctx, "store_target", None)
        if target is not None:
            # per-head q/k RMSNorm, the interleaved MRoPE and the KV-cache store of k and v in one launch
            q = kernels.qk_norm_mrope_store(q, k, v, *norms, *target(self.layer))  # [T, Hq, D] contiguous
            return self.o_proj(ctx.attend_stored(self.layer, q).reshape(T, -1))
        q, k = kernels.qk_norm_mrope(q, k, *norms)  # [T, Hq, D], [T, Hk, D], contiguous
        return self.o_proj(ctx.attend(self.layer, q, k, v).reshape(T, -1))


class _Rope:
    """The text rotary cache [max_pos, D] = [cos | sin] and the interleaved mrope section."""

    def __init__(self, text: dict, head_dim: int, device: torch.device):
        rp = text["rope_parameters"]
        self.section = list(rp.get("mrope_section") or [24, 20, 20])
        max_pos = int(text.get("max_position_embeddings", 32768))
        self.cache = rope_cos_sin_cache(head_dim, max_pos, float(rp["rope_theta"]), device=device)


class _Inner(nn.Module):
    """`model.*` of the canonical layout: visual + language_model."""

    def __init__(self, config: dict, vit_attention, tp: TensorParallel | None, *, mlp: MLPFactory | None = None):
        super().__init__()
        self.visual = Qwen3VLVisionTower(config["vision_config"], vit_attention)  # whole on every rank
        self.language_model = TextModel(config["text_config"], TextAttention, tp, mlp=mlp)


class Qwen3VLForConditionalGeneration(VisionLanguageModel):
    """Qwen3-VL dense model implementing the VLModel protocol (models/common.py). Subclasses (qwen3_vl_moe.py)
    change the architecture name and the text MLPs only."""

    ARCH = "Qwen3VLForConditionalGeneration"

    @staticmethod
    def text_mlp(text: dict) -> MLPFactory | None:
        """The per-layer text MLP factory for this text config; None = the dense GatedMLP."""
        return None

    def __init__(self, config: dict, dtype: torch.dtype, device: torch.device, vit_attention,
                 tp: TensorParallel | None = None):
        super().__init__()
        text = config["text_config"]
        self.tp = tp if active(tp) else None
        self.config = config
        self.tied = bool(config.get("tie_word_embeddings", False))
        with torch.device("meta"):
            self.model = _Inner(config, vit_attention, self.tp, mlp=self.text_mlp(text))
            if not self.tied:
                self.lm_head = lm_head(text["hidden_size"], text["vocab_size"], self.tp)
        materialize(self, dtype, device)
        attn0 = self.model.language_model.layers[0].self_attn
        self.rope = _Rope(text, attn0.head_dim, device)
        self.model.visual.build_caches(device)
        self.spec = _spec(config, attn0, self.ARCH)
        self.vision_graphs = VisionGraphRunner()

    # ---- VLModel ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """pixel_values [sum patches, C*tp*p*p], grid_thw [n, 3] -> per image (embeds [tokens, hidden], deepstack).
        A repeated set of grids replays a CUDA graph (vision_graphs.py)."""
        visual, grid = self.model.visual, grid_thw.cpu()
        meta, outputs = self.vision_graphs.run(pixel_values, grid.tolist(), visual.backends(),
                                               lambda: visual.metadata(grid), visual.compute)
        return visual.split(outputs, meta.sizes)


def _spec(config: dict, attn: TextAttention, architecture: str) -> ModelSpec:
    text, vision = config["text_config"], config["vision_config"]
    return ModelSpec(
        architecture=architecture,
        num_layers=text["num_hidden_layers"], num_heads=attn.num_heads, num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim, hidden_size=text["hidden_size"], vocab_size=text["vocab_size"],
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        image_token_id=int(config.get("image_token_id", 151655)),
        vision_start_token_id=int(config.get("vision_start_token_id", 151652)),
        eos_token_ids=tuple(config.get("eos_token_ids") or ()),
        spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
        patch_size=int(vision.get("patch_size", 16)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
    )
