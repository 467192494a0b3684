"""transformers as the oracle: its Qwen2.5-VL / Qwen3-VL processors built from pieces, and its rope index functions."""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.processing_utils import ProcessorMixin

_CLASSES = {"Qwen2_5_VLProcessor": (Qwen2_5_VLProcessor, Qwen2_5_VLModel),
            "Qwen3VLProcessor": (Qwen3VLProcessor, Qwen3VLModel)}
_NOT_IMAGE_KWARGS = ("image_processor_type", "processor_class")


def hf_processor(model_dir: Path, monkeypatch):
    """The real HF processor for the checkpoint. Its video processor is unused here; the base-class check is relaxed
    because BaseVideoProcessor is a dummy without torchvision."""
    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    proc_cls, model_cls = _CLASSES[cfg["processor_class"]]
    image_processor = Qwen2VLImageProcessorPil(**{k: v for k, v in cfg.items() if k not in _NOT_IMAGE_KWARGS})
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg))
    proc = proc_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                    chat_template=tokenizer.chat_template)
    return proc, model_cls


def hf_inputs(proc, conversation):
    return proc.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                    return_tensors="pt")


def hf_positions(model_cls, inputs, merge_size: int = 2):
    """(positions [3, T], delta) from the model's get_rope_index; text-only prompts use plain arange positions."""
    ids = inputs["input_ids"]
    if "image_grid_thw" not in inputs:
        return torch.arange(ids.shape[1]).expand(3, -1), 0
    fake_model = SimpleNamespace(
        config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge_size, tokens_per_second=2)),
        get_vision_position_ids=lambda *a, **k: model_cls.get_vision_position_ids(None, *a, **k),
    )
    positions, deltas = model_cls.get_rope_index(
        fake_model, ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    return positions[:, 0], int(deltas[0, 0])
