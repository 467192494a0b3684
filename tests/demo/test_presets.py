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
    ("random:qwen3_vl_30b_a3b", 31.07, 48, 32, 4, 2048, 151936),
])
def test_preset_shapes(name, billions, layers, heads, kv, hidden, vocab):
    model = _meta(name)
    total = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(total - billions) < 0.01, total
    s = model.spec
    assert (s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.hidden_size, s.vocab_size) == \
        (layers, heads, kv, 128, hidden, vocab)
    assert (s.image_token_id, s.vision_start_token_id, s.eos_token_ids) == (151655, 151652, (151645, 151643))


def test_moe_preset_is_128_experts_8_per_token_in_every_layer():
    from vlm_service.models.qwen3_vl_moe import SparseMoeBlock

    model = _meta("random:qwen3_vl_30b_a3b")
    blocks = [layer.mlp for layer in model.model.language_model.layers]
    assert all(isinstance(b, SparseMoeBlock) for b in blocks) and len(blocks) == 48
    b = blocks[0]
    assert (b.top_k, b.renormalize, tuple(b.experts.gate_up_proj.shape), tuple(b.experts.down_proj.shape)) == \
        (8, True, (128, 1536, 2048), (128, 2048, 768))
    assert model.model.visual.merger.linear_fc2.weight.shape[0] == 2048  # out_hidden_size = the text hidden size


def test_moe_preset_dir_processes_like_qwen3_vl(tmp_path):
    """The MoE family's processor is Qwen3-VL's: the same chat gives the same ids, positions and pixels."""
    import io

    from PIL import Image

    from vlm_service.processor.processor import Processor
    from vlm_service.types import ChatMessage, ImageInput

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (30, 90, 200)).save(buf, "PNG")
    chat = (ChatMessage("user", (ImageInput(buf.getvalue(), "image/png"), "what is this?")),)
    moe, dense = (Processor.from_pretrained(ensure_preset_dir(tmp_path, n)).process(chat)
                  for n in ("random:qwen3_vl_30b_a3b", "random:qwen3_vl_8b"))
    assert moe.input_ids == dense.input_ids and 151655 in moe.input_ids
    assert torch.equal(moe.positions, dense.positions) and moe.mrope_delta == dense.mrope_delta
    assert torch.equal(moe.images[0].pixel_values, dense.images[0].pixel_values)
    assert moe.images[0].pixel_values.shape[1] == 3 * 2 * 16 * 16


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
@pytest.mark.parametrize("name", ["random:qwen3_vl_8b", "random:qwen2_5_vl_7b", "random:qwen3_vl_30b_a3b"])
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


def test_random_weights_get_the_post_load_hook(monkeypatch):
    """A random: model is finished like a loaded checkpoint (weights_loaded: Qwen2.5-VL pads its vision MLP on
    CUDA); without it the presets measured the unpadded, misaligned MLP that no real checkpoint runs."""
    from vlm_service.demo import presets
    from vlm_service.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    cfg = presets.preset_config("qwen2_5_vl_7b")
    tiny_text = {"hidden_size": 256, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "vocab_size": 256}  # head_dim 128: the preset's mrope_section fits
    cfg.update(tiny_text)
    cfg.get("text_config", {}).update(tiny_text)
    cfg["vision_config"].update({"depth": 1, "hidden_size": 32, "intermediate_size": 40, "num_heads": 2,
                                 "out_hidden_size": 256, "fullatt_block_indexes": [0]})
    monkeypatch.setitem(presets.PRESETS, "tiny_qwen2_5_vl", cfg)
    calls = []
    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "weights_loaded", lambda self: calls.append(self))
    model = build_random_model("random:tiny_qwen2_5_vl", torch.float32, "cpu", vit_backends.create("sdpa"))
    assert calls == [model]
