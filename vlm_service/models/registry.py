"""One entry per architecture (config.json "architectures"[0]): the model class, imported lazily, its config
model_type, and its processor family (processor/family_rules.py: image / video processor settings, frame sampling,
resize, and the position function that places a video's time in the MRoPE axis or the prompt).

Adding an architecture is one `ArchitectureEntry` in `_ENTRIES`; its family is the ProcessorFamily of
family_rules.py whose `model_types` holds the entry's model_type (a new model_type is added there, a new family is
one more ProcessorFamily value); every other module asks `entry()` / `entry_for_model_type()` /
`family()` instead of comparing architecture or model_type strings.

Contract every model class follows (qwen2_5_vl.py, qwen3_vl.py, qwen3_vl_moe.py):
- the class is named after its architecture and built as
  `Cls(config: dict, dtype: torch.dtype, device: torch.device, vit_attention: ViTAttention)`, where `config` is
  config.json after `loader.normalize_config` (text fields under "text_config", rope under
  text_config["rope_parameters"], vision fields under "vision_config", token ids and "tie_word_embeddings" and
  "eos_token_ids" at the top);
- it exposes `spec: ModelSpec` and the VLModel protocol (encode_images, forward, compute_logits) of
  models/common.py;
- `load_weights(named: Iterable[tuple[str, torch.Tensor]])` takes canonical names, which are transformers-5's
  state_dict names (`model.language_model.*`, `model.visual.*`, `lm_head.weight`); the loader maps the hub layout
  onto them. It raises ModelLoadError naming the tensor on a missing/unexpected tensor or a shape mismatch, and
  copies lm_head from embed_tokens when tie_word_embeddings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vlm_service.errors import ModelLoadError
from vlm_service.processor.family_rules import ProcessorFamily, family_of_model_type
from vlm_service.processor.family_rules import family_by_name as family  # noqa: F401 (re-exported)
from vlm_service.processor.family_rules import family_names, family_of_processor_class  # noqa: F401


@dataclass(frozen=True)
class ArchitectureEntry:
    """What the service needs to know about one architecture."""

    architecture: str  # config.json "architectures"[0], also the model class's name
    module: str  # the module defining the class (imported on first use: it pulls in the model code)
    model_type: str  # config.json "model_type"

    @property
    def family(self) -> ProcessorFamily:
        """Processor settings, sampling / resize rules, position function: the family serving model_type."""
        found = family_of_model_type(self.model_type)
        if found is None:
            raise ModelLoadError(f"{self.architecture}: no processor family serves model_type {self.model_type!r}")
        return found

    def model_class(self) -> type:
        """The class implementing this architecture (imports its module)."""
        return getattr(importlib.import_module(self.module), self.architecture)


_ENTRIES: tuple[ArchitectureEntry, ...] = (
    ArchitectureEntry("Qwen2_5_VLForConditionalGeneration", "vlm_service.models.qwen2_5_vl", "qwen2_5_vl"),
    ArchitectureEntry("Qwen3VLForConditionalGeneration", "vlm_service.models.qwen3_vl", "qwen3_vl"),
    ArchitectureEntry("Qwen3VLMoeForConditionalGeneration", "vlm_service.models.qwen3_vl_moe", "qwen3_vl_moe"),
)
_BY_ARCH = {e.architecture: e for e in _ENTRIES}


def supported_architectures() -> list[str]:
    """Architecture names this service can load."""
    return sorted(_BY_ARCH)


def entry(architecture: str) -> ArchitectureEntry:
    """The entry of `architecture`; ModelLoadError for an unknown name."""
    found = _BY_ARCH.get(architecture)
    if found is None:
        raise ModelLoadError(f"unknown architecture {architecture!r}; supported: "
                             f"{', '.join(supported_architectures())}")
    return found


def model_class(architecture: str) -> type:
    """The class implementing `architecture`; ModelLoadError for an unknown name."""
    return entry(architecture).model_class()


def entry_for_model_type(model_type: str) -> ArchitectureEntry | None:
    """The entry whose config model_type is `model_type`, or None."""
    return next((e for e in _ENTRIES if e.model_type == model_type), None)
