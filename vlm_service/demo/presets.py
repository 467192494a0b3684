"""`random:<preset>`: full-size model shapes with random weights built directly on the device, for performance work
where no real weights exist. Config values are the public config.json of each checkpoint (hub format).

A preset also gets a small on-disk directory (config, generation config, tokenizer, preprocessor config; no weights)
so the processor and server read it like any checkpoint: the demo tokenizer with its special tokens moved to Qwen's
real ids (151643...).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from vlm_service.errors import ModelLoadError

PREFIX = "random:"

_QWEN_EOS = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}
_QWEN_TOKENS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                "vision_end_token_id": 151653}
# Qwen's ids of the demo tokenizer's special tokens.
QWEN_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                    "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
                    "<|image_pad|>": 151655, "<|video_pad|>": 151656}

PRESETS: dict[str, dict] = {
    # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "qwen2_5_vl_7b": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": False,
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                          "hidden_act": "silu", "in_channels": 3, "tokens_per_second": 2},
        **_QWEN_TOKENS, "bos_token_id": 151643, "eos_token_id": 151645,
    },
    # Qwen/Qwen3-VL-8B-Instruct config.json
    "qwen3_vl_8b": {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                        "rope_theta": 5000000,
                        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                                         "rope_type": "default"},
                        "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": False},
        "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                          "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24],
                          "hidden_act": "gelu_pytorch_tanh", "in_channels": 3},
        "tie_word_embeddings": False, **_QWEN_TOKENS,
    },
    # Qwen/Qwen3-VL-30B-A3B-Instruct config.json: 48 sparse layers of 128 experts (8 per token), the 8B's vision tower
    "qwen3_vl_30b_a3b": {
        "architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe",
        "text_config": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936,
                        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                        "rope_theta": 5000000,
                        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                                         "rope_type": "default"},
                        "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
                        "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": False},
        "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                          "out_hidden_size": 2048, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24],
                          "hidden_act": "gelu_pytorch_tanh", "in_channels": 3},
        "tie_word_embeddings": False, **_QWEN_TOKENS,
    },
}
# Larger than one GPU (bf16): served with --tensor-parallel-size (engine/parallel/).
PRESETS.update({
    # Qwen/Qwen2.5-VL-72B-Instruct config.json (~145 GB in bf16: TP >= 2 on H200s)
    "qwen2_5_vl_72b": {
        **PRESETS["qwen2_5_vl_7b"],
        "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 152064,
        "vision_config": {**PRESETS["qwen2_5_vl_7b"]["vision_config"], "intermediate_size": 3456,
                          "out_hidden_size": 8192},
    },
    # Qwen/Qwen3-VL-32B-Instruct config.json (~66 GB in bf16)
    "qwen3_vl_32b": {
        **PRESETS["qwen3_vl_8b"],
        "text_config": {**PRESETS["qwen3_vl_8b"]["text_config"], "hidden_size": 5120, "intermediate_size": 25600,
                        "num_hidden_layers": 64, "num_attention_heads": 64, "num_key_value_heads": 8},
        "vision_config": {**PRESETS["qwen3_vl_8b"]["vision_config"], "out_hidden_size": 5120},
    },
})


def is_random(name: str | os.PathLike) -> bool:
    return str(name).startswith(PREFIX)


def preset_name(name: str) -> str:
    """'random:qwen3_vl_8b' or 'qwen3_vl_8b' -> 'qwen3_vl_8b'; ModelLoadError for an unknown preset."""
    key = str(name)[len(PREFIX):] if is_random(name) else str(name)
    if key not in PRESETS:
        raise ModelLoadError(f"unknown preset {name!r}; choose one of "
                             f"{', '.join(PREFIX + k for k in sorted(PRESETS))}")
    return key


def preset_config(name: str) -> dict:
    """The hub-format config.json contents of a preset (a copy)."""
    return copy.deepcopy(PRESETS[preset_name(name)])


def build_random_model(name: str, dtype: torch.dtype, device: torch.device | str, vit_attention,
                       seed: int = 0, std: float = 0.02, tp=None, num_layers: int | None = None):
    """The preset's model class at full size on `device`, weights N(0, std) (norms one, biases zero). With `tp`
    (models/parallel.TensorParallel) this rank's shard; the vision tower, built first, is the same on every rank.
    num_layers (profiling, benchmarks/profile_decode.py) keeps only the first that many text decoder layers."""
    from vlm_service.models.layers import init_random_
    from vlm_service.models.hf_config import normalize_config
    from vlm_service.models.registry import model_class

    raw = preset_config(name)
    if num_layers is not None:
        if num_layers < 1:
            raise ModelLoadError(f"num_layers must be >= 1, got {num_layers}")
        (raw.get("text_config") or raw)["num_hidden_layers"] = int(num_layers)
    config = normalize_config(raw, {"eos_token_id": _QWEN_EOS["eos_token_id"]})
    extra = {"tp": tp} if tp else {}
    model = model_class(config["architectures"][0])(config, dtype, torch.device(device), vit_attention, **extra)
    if torch.device(device).type != "meta":
        init_random_(model, std, seed)
        model.weights_loaded()  # what a checkpoint load runs after the weights (Qwen2.5-VL pads its vision MLP)
    return model.eval()


def _remap_tokenizer(tok_dir: Path) -> None:
    """Move the demo tokenizer's special tokens to Qwen's real ids (the learned vocab keeps its low ids)."""
    path = tok_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    for entry in data["added_tokens"]:
        entry["id"] = QWEN_SPECIAL_IDS[entry["content"]]
        # an added token keeps its id only when the model vocab holds it there
        data["model"]["vocab"][entry["content"]] = entry["id"]
    path.write_text(json.dumps(data))


def write_preset_dir(out_dir: str | Path, name: str) -> Path:
    """config.json + generation_config.json + tokenizer (Qwen special ids) + preprocessor config; no weights."""
    from vlm_service.models import registry
    from vlm_service.processor.tokenizer import build_demo_tokenizer
    from vlm_service.processor.family_rules import write_preprocessor_config

    key, out = preset_name(name), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(preset_config(key), indent=2))
    (out / "generation_config.json").write_text(json.dumps(_QWEN_EOS, indent=2))
    build_demo_tokenizer(out)
    _remap_tokenizer(out)
    family = registry.entry(PRESETS[key]["architectures"][0]).family.name
    write_preprocessor_config(out, family, hub_limits=True)  # full-size images, as the real models
    return out


def ensure_preset_dir(state_dir: str | Path, name: str) -> Path:
    """state_dir/models/random-<preset>-v2, written once (demo.build_once); v2: the public checkpoints' pixel limits."""
    from vlm_service.demo.checkpoint import build_once

    key = preset_name(name)
    return build_once(Path(state_dir) / "models" / f"random-{key}-v2", lambda d: write_preset_dir(d, key))
