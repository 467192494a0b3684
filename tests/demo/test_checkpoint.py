"""The demo checkpoints: load in transformers' Auto classes and in ours, agree, and are built once, atomically."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import vit_backends
from vlm_service.demo.checkpoint import VERSION, ensure_demo_model, make_demo_model
from tests.models.reference_generate import DenseKVContext, generate, multimodal_embeds
from vlm_service.models.loader import load_model


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


def _prompt(config: dict, grid=(1, 6, 4)):
    """ids [T] with one image of `grid`, mm types [T], pixel_values, grid_thw."""
    n = grid[0] * grid[1] * grid[2] // 4
    ids = [5, 17, 300, config["vision_start_token_id"]] + [config["image_token_id"]] * n
    ids += [config["vision_end_token_id"], 42, 99, 7]
    types = [1 if i == config["image_token_id"] else 0 for i in ids]
    patch = config["vision_config"]["patch_size"]
    pv = torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * patch * patch, generator=torch.Generator().manual_seed(0))
    return torch.tensor(ids), torch.tensor(types), pv, torch.tensor([grid])


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen2_5_vl"])
def test_demo_loads_in_transformers_and_ours(arch, demo_root):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    path = ensure_demo_model(demo_root, arch)
    assert path.name == f"demo-{arch}-{VERSION}"
    assert sum(f.stat().st_size for f in path.iterdir()) < 16e6
    config = json.loads((path / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(path)
    assert config["text_config"]["vocab_size"] == len(tok)
    for key, token in [("image_token_id", "<|image_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
                       ("vision_end_token_id", "<|vision_end|>"), ("video_token_id", "<|video_pad|>")]:
        assert config[key] == tok.convert_tokens_to_ids(token)
    assert AutoConfig.from_pretrained(path).model_type == arch
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    if importlib.util.find_spec(f"vlm_service.models.{arch}") is None:
        pytest.skip(f"vlm_service.models.{arch} not written yet")
    ours = load_model(path, torch.float32, "cpu", vit_backends.create("sdpa"))
    assert set(ours.spec.eos_token_ids) == {tok.convert_tokens_to_ids("<|im_end|>"),
                                            tok.convert_tokens_to_ids("<|endoftext|>")}
    ids, types, pv, grid = _prompt(config)
    with torch.no_grad():
        ref = hf(input_ids=ids[None], mm_token_type_ids=types[None], pixel_values=pv, image_grid_thw=grid).logits[0]
        pos, delta = hf.model.get_rope_index(ids[None], types[None], image_grid_thw=grid)
    hidden = ours.forward(ids, pos[:, 0], DenseKVContext.for_model(ours, ids.shape[0]),
                          multimodal_embeds(ours, ids, pv, grid))
    torch.testing.assert_close(ours.compute_logits(hidden), ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ref_tokens = hf.generate(input_ids=ids[None], mm_token_type_ids=types[None], pixel_values=pv,
                                 image_grid_thw=grid, max_new_tokens=8, do_sample=False)[0, ids.shape[0]:].tolist()
    assert generate(ours, ids, pos[:, 0], int(delta), pv, grid, max_new_tokens=8) == ref_tokens


def test_ensure_demo_model_builds_once(demo_root):
    first = ensure_demo_model(demo_root, "qwen3_vl")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = ensure_demo_model(demo_root, "qwen3_vl")
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    leftovers = [p.name for p in (demo_root / "models").iterdir() if p.name.startswith(".demo-")]
    assert leftovers == []


def test_demo_is_deterministic(tmp_path):
    a = make_demo_model(tmp_path / "a", "qwen3_vl", seed=3)
    b = make_demo_model(tmp_path / "b", "qwen3_vl", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_unknown_demo_arch(tmp_path):
    with pytest.raises(ValueError, match="unknown demo architecture"):
        make_demo_model(tmp_path, "llava")
