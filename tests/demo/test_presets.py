"""random:<preset>: full-size shapes (checked on the meta device here, run for real on a GPU) and their tokenizer dir."""

from __future__ import annotations

import pytest
import torch

import vit_backends
from vlm_service.errors import ModelLoadError
from vlm_service.models.loader import load_model, read_config
from vlm_service.demo.presets import build_random_model, ensure_preset_dir


def _meta(name):
    return load_model(name, torch.bfloat16, "meta", vit_backends.create("sdpa"))


@pytest.mark.parametrize("name, billions, layers, heads, kv, hidden, vocab", [
    ("random:qwen3_vl_8b", 8.77, 36, 32, 8, 4096, 151936),
    ("random:qwen2_5_vl_7b", 8.29, 28, 28, 4, 3584, 152064),
])
def test_preset_shapes(name, billions, layers, heads, kv, hidden, vocab):
    model = _meta(name)
    total = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(total - billions) < 0.01, total
    s = model.spec
    assert (s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.hidden_size, s.vocab_size) == \
        (layers, heads, kv, 128, hidden, vocab)
    assert (s.image_token_id, s.vision_start_token_id, s.eos_token_ids) == (151655, 151652, (151645, 151643))


def test_unknown_preset():
    with pytest.raises(ModelLoadError, match="unknown preset 'random:llama'"):
        _meta("random:llama")


def test_preset_dir_tokenizer_uses_qwen_ids(tmp_path):
    from transformers import AutoTokenizer

    path = ensure_preset_dir(tmp_path, "random:qwen3_vl_8b")
    assert ensure_preset_dir(tmp_path, "qwen3_vl_8b") == path
    assert not list(path.glob("*.safetensors"))
    tok = AutoTokenizer.from_pretrained(path)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the cat"}]}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids[:1] == [151644] and 151655 in ids and 151652 in ids and 151645 in ids
    assert tok.decode(ids).startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>describe")
    config = read_config(path)
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [24, 20, 20]
    assert config["eos_token_ids"] == [151645, 151643]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["random:qwen3_vl_8b", "random:qwen2_5_vl_7b"])
def test_random_preset_runs_on_gpu(name):
    from tests.models.reference_generate import generate

    model = build_random_model(name, torch.bfloat16, "cuda", vit_backends.create("sdpa"))
    p, m = model.spec.patch_size, model.spec.spatial_merge_size
    grid = torch.tensor([[1, 32, 24]])  # a 448x336-ish image
    pv = torch.randn(32 * 24, 3 * 2 * p * p, device="cuda")
    n = 32 * 24 // m ** 2
    ids = torch.tensor([1, 2, 151652] + [151655] * n + [151653, 3, 4], device="cuda")
    pos = torch.arange(ids.shape[0], device="cuda").expand(3, -1)
    tokens = generate(model, ids, pos, 0, pv, grid, max_new_tokens=4, eos_token_ids=())
    assert len(tokens) == 4 and all(0 <= t < model.spec.vocab_size for t in tokens)
