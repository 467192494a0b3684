"""The built-in `demo` checkpoints: tiny Qwen3-VL / Qwen2.5-VL models with seeded random weights, written once in the
HF format (config.json, model.safetensors, generation_config.json, tokenizer, preprocessor config) by transformers'
configs, so every real code path runs with no download and no GPU. Their output is gibberish by nature.

The weights are made by our own model classes and written under transformers' tensor names (fused projections split
back, models/layers.weight_slots): importing transformers' modeling modules to build them cost a cold start
20-30 s on 2 busy cores, longer than the rest of the build. The checkpoint still loads in transformers' Auto
classes, and transformers gives the same greedy tokens on it (tests/demo/test_checkpoint.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from vlm_service.models.layers import seeded_weights_

ARCHS = ("qwen3_vl", "qwen2_5_vl")
VERSION = "v3"  # v2: text head_dim 64, a size FlashInfer's paged attention kernels support; v3: weights seeded
# in our models' parameter order (no transformers modeling import)


def _special_ids(tokenizer_dir: Path) -> tuple[dict[str, int], int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    names = {"image": "<|image_pad|>", "video": "<|video_pad|>", "start": "<|vision_start|>",
             "end": "<|vision_end|>", "im_end": "<|im_end|>", "eot": "<|endoftext|>"}
    return {k: tok.token_to_id(v) for k, v in names.items()}, tok.get_vocab_size(with_added_tokens=True)


def _token_fields(ids: dict[str, int]) -> dict:
    return {"image_token_id": ids["image"], "video_token_id": ids["video"],
            "vision_start_token_id": ids["start"], "vision_end_token_id": ids["end"]}


def _qwen3_config(ids: dict[str, int], vocab: int):
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
                rms_norm_eps=1e-6, bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [12, 10, 10],
                                 "mrope_interleaved": True})
    vision = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=128, num_position_embeddings=256,
                  deepstack_visual_indexes=[1, 2, 3])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_fields(ids))


def _qwen2_5_config(ids: dict[str, int], vocab: int):
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768, rms_norm_eps=1e-6,
                bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=128, window_size=112, fullatt_block_indexes=[1, 3],
                  hidden_act="silu")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            **_token_fields(ids))


_CONFIGS = {"qwen3_vl": _qwen3_config, "qwen2_5_vl": _qwen2_5_config}  # demo arch (a dense model_type) -> config


def make_demo_model(out_dir: str | Path, arch: str = "qwen3_vl", seed: int = 0) -> Path:
    """Write the tiny `arch` demo checkpoint (HF format, a few MB) into out_dir and return it."""
    from vlm_service.models import registry
    from vlm_service.processor.tokenizer import build_demo_tokenizer
    from vlm_service.processor.family_rules import write_preprocessor_config

    if arch not in ARCHS:
        raise ValueError(f"unknown demo architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    out = Path(out_dir)
    build_demo_tokenizer(out)
    ids, vocab = _special_ids(out)
    config = _CONFIGS[arch](ids, vocab)
    config.architectures = [registry.entry_for_model_type(arch).architecture]  # the dense model of the family
    config.save_pretrained(out)  # config.json, as transformers writes it
    generation = {"bos_token_id": ids["eot"], "eos_token_id": [ids["im_end"], ids["eot"]], "pad_token_id": ids["eot"]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    _write_weights(out, generation, seed)
    write_preprocessor_config(out, arch)
    return out


def _write_weights(out: Path, generation: dict, seed: int) -> None:
    """model.safetensors: our model class built from out/config.json, seeded, saved under transformers' names."""
    from safetensors.torch import save_file

    import vit_backends
    from vlm_service.models.layers import weight_slots
    from vlm_service.models.hf_config import normalize_config, read_json
    from vlm_service.models.registry import model_class

    config = normalize_config(read_json(out / "config.json"), generation)
    model = model_class(config["architectures"][0])(config, torch.float32, torch.device("cpu"),
                                                    vit_backends.create("sdpa"))
    seeded_weights_(model, seed)  # matrices N(0, 0.05), norms ~1, small biases
    tensors = {name: t.detach().clone().contiguous() for name, t in weight_slots(model).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """target, built once by build(dir): in a temp dir beside it, then renamed into place (atomic). A concurrent
    builder that wins the rename is fine; the loser's copy is dropped."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another builder: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_demo_model(state_dir: str | Path, arch: str = "qwen3_vl") -> Path:
    """state_dir/models/demo-<arch>-<VERSION>, built once (see build_once)."""
    return build_once(Path(state_dir) / "models" / f"demo-{arch}-{VERSION}", lambda d: make_demo_model(d, arch))
