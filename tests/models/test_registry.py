"""The architecture registry: every supported architecture has a complete entry that agrees with transformers,
an unknown one is refused with ModelLoadError, and importing the registry loads no model code."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import pytest
import transformers

from vlm_service.errors import ModelLoadError
from vlm_service.models import registry
from vlm_service.processor.video_config import VideoConfig

ARCHS = registry.supported_architectures()


def test_the_three_qwen_architectures_are_supported():
    assert set(ARCHS) == {"Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
                          "Qwen3VLMoeForConditionalGeneration"}


@pytest.mark.parametrize("arch", ARCHS)
def test_entry_is_complete(arch):
    entry = registry.entry(arch)
    for f in dataclasses.fields(entry.family):
        value = getattr(entry.family, f.name)
        assert value not in (None, "", ()), f"{arch}: family field {f.name} is empty"
    for name in ("num_sampled_frames", "sample_indices", "resize_size", "video_timing"):
        assert callable(getattr(entry.family, name))
    cls = entry.model_class()
    assert cls.__name__ == arch and callable(getattr(cls, "load_weights", None))
    for method in ("encode_images", "forward", "compute_logits"):
        assert callable(getattr(cls, method, None)), f"{arch} lacks {method}"


@pytest.mark.parametrize("arch", ARCHS)
def test_entry_agrees_with_transformers(arch):
    entry = registry.entry(arch)
    hf_config = transformers.CONFIG_MAPPING[entry.model_type]()
    assert hasattr(transformers, arch), f"transformers has no {arch}"
    assert hf_config.vision_config.patch_size == entry.family.patch_size
    assert hasattr(transformers, entry.family.processor_class)
    module, _, cls_name = entry.family.hf_video_processor.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and f"class {cls_name}(" in open(spec.origin).read()


@pytest.mark.parametrize("arch", ARCHS)
def test_model_type_and_processor_class_lead_back_to_the_entry(arch):
    entry = registry.entry(arch)
    assert registry.entry_for_model_type(entry.model_type) is entry
    assert registry.family_of_processor_class(entry.family.processor_class) is entry.family
    assert registry.family(entry.family.name) is entry.family
    assert VideoConfig(family=entry.family.name, patch_size=entry.family.patch_size).rules is entry.family


def test_unknown_architecture_is_a_model_load_error_naming_the_supported_ones():
    with pytest.raises(ModelLoadError, match=r"unknown architecture 'LlavaForConditionalGeneration'.*Qwen3VL"):
        registry.entry("LlavaForConditionalGeneration")
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        registry.model_class("Qwen2VLForConditionalGeneration")
    assert registry.entry_for_model_type("llava") is None


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'qwen2_vl'"):
        VideoConfig(family="qwen2_vl")


def test_importing_the_registry_loads_no_model_module():
    code = ("import sys, vlm_service, vlm_service.models.registry as r; r.supported_architectures(); "
            "print(sorted(m for m in sys.modules if m.startswith('vlm_service.models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['vlm_service.models.registry']"
