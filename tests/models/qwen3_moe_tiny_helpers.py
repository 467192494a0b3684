"""Tiny Qwen3-VL-MoE checkpoints built with transformers' own classes (same text/vision sizes as
qwen3_tiny_helpers.py, so its make_prompt / hf_positions serve both)."""

from __future__ import annotations

from pathlib import Path

import torch
from qwen3_tiny_helpers import IMAGE, VEND, VIDEO, VSTART, randomize_

# name -> text-config overrides: k=2 with one dense layer (mlp_only_layers); k=4 where decoder_sparse_step=2 makes
# layers 0 and 2 dense and 1 and 3 sparse
MOE_VARIANTS = {
    "k2_mlp_only": dict(num_experts=6, num_experts_per_tok=2, mlp_only_layers=[1], num_hidden_layers=3),
    "k4_sparse_step": dict(num_experts=8, num_experts_per_tok=4, decoder_sparse_step=2, num_hidden_layers=4),
}


def tiny_qwen3_moe_config(variant: str = "k2_mlp_only", **text_overrides):
    from transformers import Qwen3VLMoeConfig

    text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=24, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    text.update(MOE_VARIANTS[variant])
    text.update(text_overrides)
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
                            vision_start_token_id=VSTART, vision_end_token_id=VEND, tie_word_embeddings=False)


def build_tiny_qwen3_moe(out_dir: Path, variant: str = "k2_mlp_only", seed: int = 0) -> Path:
    """save_pretrained of a randomized transformers Qwen3VLMoeForConditionalGeneration: the fused 3-D expert
    layout (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]) under model.language_model.*."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(tiny_qwen3_moe_config(variant)).eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def moe_from_demo(demo_dir: Path, out_dir: Path, variant: str = "k2_mlp_only", seed: int = 0) -> Path:
    """A copy of the dense Qwen3-VL demo checkpoint (its tokenizer, chat template and image / video processor
    configs) whose model is a randomized transformers Qwen3VLMoeForConditionalGeneration with the demo's text and
    vision sizes and MOE_VARIANTS[variant]'s experts: a MoE checkpoint the served processor can read."""
    import shutil

    from transformers import AutoConfig, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    out_dir = Path(out_dir)
    shutil.copytree(demo_dir, out_dir, dirs_exist_ok=True)
    for old in [*out_dir.glob("*.safetensors"), *out_dir.glob("*.safetensors.index.json")]:
        old.unlink()
    dense = AutoConfig.from_pretrained(demo_dir)
    text = {k: v for k, v in dense.text_config.to_dict().items() if k not in ("model_type", "architectures")}
    text.update(MOE_VARIANTS[variant], moe_intermediate_size=48,
                num_hidden_layers=dense.text_config.num_hidden_layers)
    vision = {k: v for k, v in dense.vision_config.to_dict().items() if k != "model_type"}
    ids = {k: getattr(dense, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                          "vision_end_token_id")}
    torch.manual_seed(seed)
    config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir)
    return out_dir
