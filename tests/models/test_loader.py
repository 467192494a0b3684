"""Loader: both key layouts, shards, config variants, and a typed one-line error for every broken checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from qwen3_tiny_helpers import build_tiny_qwen3, hf_positions, make_prompt
from safetensors.torch import load_file, save_file

import vit_backends
from vlm_service.errors import ModelLoadError
from tests.models.reference_generate import DenseKVContext, multimodal_embeds
from vlm_service.models.loader import canonical_name, load_model, normalize_config


def _load(path):
    return load_model(path, torch.float32, "cpu", vit_backends.create("sdpa"))


def _logits(model, parts=(4, (4, 6), 3)):
    ids, _, pv, grid = make_prompt(list(parts), seed=3)
    pos = torch.arange(ids.shape[0]).expand(3, -1)  # any positions will do: both sides get the same
    ctx = DenseKVContext.for_model(model, ids.shape[0])
    return model.compute_logits(model.forward(ids, pos, ctx, multimodal_embeds(model, ids, pv, grid)))


def _hub_name(name: str) -> str:
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name.replace("model.language_model.", "model.", 1)


def _copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the checkpoint at src whose state dict is edit(state dict)."""
    _copy_config(src, dst)
    save_file(edit(load_file(src / "model.safetensors")), dst / "model.safetensors")
    return dst


def test_canonical_name_maps_hub_layout():
    assert canonical_name("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert canonical_name("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert canonical_name("visual.blocks.0.attn.qkv.bias") == "model.visual.blocks.0.attn.qkv.bias"
    for same in ("lm_head.weight", "model.visual.merger.norm.weight", "model.language_model.norm.weight"):
        assert canonical_name(same) == same


def test_hub_layout_loads_identically(tiny_qwen3_dir, our_qwen3, tmp_path):
    hub = _rewrite(tiny_qwen3_dir, tmp_path / "hub", lambda sd: {_hub_name(k): v for k, v in sd.items()})
    assert any(k.startswith("visual.") for k in load_file(hub / "model.safetensors"))
    torch.testing.assert_close(_logits(_load(hub)), _logits(our_qwen3), atol=0, rtol=0)


def test_sharded_checkpoint_with_index(tiny_qwen3_dir, our_qwen3, tmp_path):
    dst = _copy_config(tiny_qwen3_dir, tmp_path / "sharded")
    sd = load_file(tiny_qwen3_dir / "model.safetensors")
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, dst / file)
        weight_map.update({k: file for k in keys})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.testing.assert_close(_logits(_load(dst)), _logits(our_qwen3), atol=0, rtol=0)
    (dst / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors"):
        _load(dst)


def test_rope_scaling_config_and_bf16(tiny_qwen3_dir, our_qwen3, tmp_path):
    """A hub-style config (rope_scaling + rope_theta) loads as the transformers-5 one does."""
    dst = tmp_path / "hubcfg"
    shutil.copytree(tiny_qwen3_dir, dst)
    cfg = json.loads((dst / "config.json").read_text())
    rope = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_theta"] = rope.pop("rope_theta")
    cfg["text_config"]["rope_scaling"] = rope
    (dst / "config.json").write_text(json.dumps(cfg))
    torch.testing.assert_close(_logits(_load(dst)), _logits(our_qwen3), atol=0, rtol=0)
    bf16 = load_model(dst, torch.bfloat16, "cpu", vit_backends.create("sdpa"))
    assert bf16.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.isfinite(_logits(bf16)).all()


def test_tied_embeddings_match_transformers(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    path = build_tiny_qwen3(tmp_path / "tied", seed=1, tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    hf = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    ids, types, pv, grid = make_prompt([3, (4, 4), 2], seed=5)
    with torch.no_grad():
        ref = hf(input_ids=ids[None], mm_token_type_ids=types[None], pixel_values=pv, image_grid_thw=grid).logits[0]
    ours = _load(path)
    pos, _ = hf_positions(hf, ids, types, grid)
    hidden = ours.forward(ids, pos, DenseKVContext.for_model(ours, ids.shape[0]), multimodal_embeds(ours, ids, pv, grid))
    torch.testing.assert_close(ours.compute_logits(hidden), ref, atol=1e-4, rtol=1e-4)


def test_normalize_flat_qwen2_5_style_config():
    raw = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "hidden_size": 3584, "rope_theta": 1e6,
           "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "image_token_id": 151655,
           "vision_start_token_id": 151652, "eos_token_id": 151645, "tie_word_embeddings": False,
           "vision_config": {"depth": 32, "hidden_size": 1280}}
    cfg = normalize_config(raw, {"eos_token_id": [151645, 151643]})
    assert cfg["text_config"]["hidden_size"] == 3584
    assert cfg["text_config"]["rope_parameters"] == {"rope_theta": 1e6, "mrope_section": [16, 24, 24],
                                                     "rope_type": "default", "mrope_interleaved": False}
    assert cfg["vision_config"]["depth"] == 32 and cfg["image_token_id"] == 151655
    assert cfg["eos_token_ids"] == [151645, 151643] and cfg["tie_word_embeddings"] is False


# ---- broken checkpoints ---------------------------------------------------------------------------------------


def test_truncated_safetensors(tiny_qwen3_dir, tmp_path):
    dst = _copy_config(tiny_qwen3_dir, tmp_path / "trunc")
    data = (tiny_qwen3_dir / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*(corrupt|truncated|cannot read)") as e:
        _load(dst)
    assert "\n" not in str(e.value)


def test_garbage_safetensors(tiny_qwen3_dir, tmp_path):
    dst = _copy_config(tiny_qwen3_dir, tmp_path / "garbage")
    (dst / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        _load(dst)


def test_missing_tensor_is_named(tiny_qwen3_dir, tmp_path):
    gone = "model.language_model.layers.1.self_attn.k_norm.weight"
    dst = _rewrite(tiny_qwen3_dir, tmp_path / "missing", lambda sd: {k: v for k, v in sd.items() if k != gone})
    with pytest.raises(ModelLoadError, match=f"missing tensor '{gone}'"):
        _load(dst)


def test_missing_merged_part_is_named(tiny_qwen3_dir, tmp_path):
    gone = "model.language_model.layers.0.mlp.up_proj.weight"
    dst = _rewrite(tiny_qwen3_dir, tmp_path / "missing_up", lambda sd: {k: v for k, v in sd.items() if k != gone})
    with pytest.raises(ModelLoadError, match=gone):
        _load(dst)


def test_shape_mismatch_names_tensor_and_file(tiny_qwen3_dir, tmp_path):
    name = "model.visual.blocks.0.attn.qkv.weight"
    dst = _rewrite(tiny_qwen3_dir, tmp_path / "shape", lambda sd: {**sd, name: sd[name][:-1].contiguous()})
    with pytest.raises(ModelLoadError, match=rf"model\.safetensors.*{name}.*shape"):
        _load(dst)


def test_unexpected_tensor_is_named(tiny_qwen3_dir, tmp_path):
    dst = _rewrite(tiny_qwen3_dir, tmp_path / "extra", lambda sd: {**sd, "model.extra.weight": torch.zeros(2)})
    with pytest.raises(ModelLoadError, match="model.extra.weight"):
        _load(dst)


def test_unknown_architecture(tiny_qwen3_dir, tmp_path):
    dst = tmp_path / "unknown"
    shutil.copytree(tiny_qwen3_dir, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["LlavaForConditionalGeneration"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unknown architecture 'LlavaForConditionalGeneration'"):
        _load(dst)


def test_missing_dir_config_and_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        _load(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json"):
        _load(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="config.json.*JSON"):
        _load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3VLForConditionalGeneration"]}))
    with pytest.raises(ModelLoadError):
        _load(tmp_path)
