"""Architecture name (config.json "architectures"[0]) -> model class, imported lazily.

Contract every model class follows (qwen2_5_vl.py, qwen3_vl.py, qwen3_vl_moe.py):
- the class is named after its architecture and built as
  `Cls(config: dict, dtype: torch.dtype, device: torch.device, vit_attention: ViTAttention)`, where `config` is
  config.json after `loader.normalize_config` (text fields under "text_config", rope under
  text_config["rope_parameters"], vision fields under "vision_config", token ids and "tie_word_embeddings" and
  "eos_token_ids" at the top);
- it exposes `spec: ModelSpec` and the VLModel protocol (encode_images, forward, compute_logits) of models/common.py;
- `load_weights(named: Iterable[tuple[str, torch.Tensor]])` takes canonical names, which are transformers-5's
  state_dict names (`model.language_model.*`, `model.visual.*`, `lm_head.weight`); the loader maps the hub layout
  onto them. It raises ModelLoadError naming the tensor on a missing/unexpected tensor or a shape mismatch, and
  copies lm_head from embed_tokens when tie_word_embeddings.
"""

from __future__ import annotations

import importlib

from vlm_service.errors import ModelLoadError

_MODULES: dict[str, str] = {
    "Qwen2_5_VLForConditionalGeneration": "vlm_service.models.qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "vlm_service.models.qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "vlm_service.models.qwen3_vl_moe",
}


def supported_architectures() -> list[str]:
    """Architecture names this service can load."""
    return sorted(_MODULES)


def model_class(architecture: str) -> type:
    """The class implementing `architecture`; ModelLoadError for an unknown name."""
    module = _MODULES.get(architecture)
    if module is None:
        raise ModelLoadError(f"unknown architecture {architecture!r}; supported: "
                             f"{', '.join(supported_architectures())}")
    return getattr(importlib.import_module(module), architecture)
