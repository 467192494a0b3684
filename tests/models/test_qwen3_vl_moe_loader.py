"""Loader on Qwen3-VL-MoE checkpoints: the three expert layouts (per expert, fused as transformers-5 saves it, fused
transposed as the hub holds it) x both key prefixes x single file or shards all load the same weights; bad expert
tensors get a one-line ModelLoadError naming them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from qwen3_moe_tiny_helpers import build_tiny_qwen3_moe
from qwen3_tiny_helpers import make_prompt
from safetensors.torch import load_file, save_file

import vit_backends
from vlm_service.errors import ModelLoadError
from tests.models.reference_generate import DenseKVContext, multimodal_embeds
from vlm_service.models.loader import load_model

GATE_UP, DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"
LAYER0 = "model.language_model.layers.0."


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen3_moe(tmp_path_factory.mktemp("moe_k2"), "k2_mlp_only", seed=5)


@pytest.fixture(scope="module")
def reference_logits(moe_dir):
    return _logits(_load(moe_dir))


def _load(path):
    return load_model(path, torch.float32, "cpu", vit_backends.create("sdpa"))


def _logits(model):
    ids, _, pv, grid = make_prompt([4, (4, 6), 3], seed=3)
    pos = torch.arange(ids.shape[0]).expand(3, -1)  # any positions will do: every side gets the same
    ctx = DenseKVContext.for_model(model, ids.shape[0])
    return model.compute_logits(model.forward(ids, pos, ctx, multimodal_embeds(model, ids, pv, grid)))


# ---- state-dict rewrites (the transformers-5 fused layout in, another layout out) ---------------------------------

def per_expert(sd: dict) -> dict:
    out = {}
    for name, t in sd.items():
        if name.endswith(GATE_UP):
            base, inter = name[: -len("gate_up_proj")], t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :inter].clone()
                out[f"{base}{e}.up_proj.weight"] = t[e, inter:].clone()
        elif name.endswith(DOWN):
            base = name[: -len("down_proj")]
            out.update({f"{base}{e}.down_proj.weight": t[e].clone() for e in range(t.shape[0])})
        else:
            out[name] = t
    return out


def fused_transposed(sd: dict) -> dict:
    """The hub's fused layout: gate_up_proj [E, H, 2I], down_proj [E, I, H]."""
    return {k: v.transpose(1, 2).contiguous() if k.endswith((GATE_UP, DOWN)) else v for k, v in sd.items()}


def hub_prefix(sd: dict) -> dict:
    def rename(name):
        if name.startswith("model.visual."):
            return name[len("model."):]
        return name.replace("model.language_model.", "model.", 1)
    return {rename(k): v for k, v in sd.items()}


LAYOUTS = {"per_expert": per_expert, "fused": lambda sd: sd, "fused_transposed": fused_transposed}


def _write(src: Path, dst: Path, sd: dict, shards: int = 1) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    if shards == 1:
        save_file(sd, dst / "model.safetensors")
        return dst
    names, weight_map = sorted(sd), {}
    for i in range(shards):  # interleaved: one layer's experts spread over every shard
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k] for k in names[i::shards]}, dst / file)
        weight_map.update({k: file for k in names[i::shards]})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("prefix", ["canonical", "hub"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_prefix_and_sharding_loads_the_same_weights(layout, prefix, shards, moe_dir, reference_logits,
                                                                  tmp_path):
    sd = LAYOUTS[layout](load_file(moe_dir / "model.safetensors"))
    if prefix == "hub":
        sd = hub_prefix(sd)
    if layout == "per_expert":
        assert f"{'model.' if prefix == 'hub' else LAYER0[:-len('layers.0.')]}layers.0.mlp.experts.5.up_proj.weight" \
            in sd
    got = _logits(_load(_write(moe_dir, tmp_path / "ckpt", sd, shards)))
    torch.testing.assert_close(got, reference_logits, atol=0, rtol=0)


def test_transformers_reads_our_hub_orientation_the_same_way(moe_dir, reference_logits, tmp_path):
    """The orientation oracle: transformers' own conversion (Transpose when the shape is not its own) loads the
    transposed checkpoint to the same model we load from it."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    path = _write(moe_dir, tmp_path / "hub", fused_transposed(load_file(moe_dir / "model.safetensors")))
    assert tuple(load_file(path / "model.safetensors")[LAYER0 + GATE_UP].shape) == (6, 64, 48)
    hf = Qwen3VLMoeForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    ours = _load(path)
    for theirs, mine in zip(hf.model.language_model.layers, ours.model.language_model.layers):
        if hasattr(mine.mlp, "experts"):
            torch.testing.assert_close(mine.mlp.experts.gate_up_proj, theirs.mlp.experts.gate_up_proj, atol=0, rtol=0)
            torch.testing.assert_close(mine.mlp.experts.down_proj, theirs.mlp.experts.down_proj, atol=0, rtol=0)
    torch.testing.assert_close(_logits(ours), reference_logits, atol=0, rtol=0)


def test_fused_tensors_are_split_into_views_not_copies(moe_dir):
    model = _load(moe_dir)
    experts = model.model.language_model.layers[0].mlp.experts
    stack = torch.randn(6, 64, 48)  # hub orientation [E, H, 2I]
    parts = list(experts.split_fused(LAYER0 + "mlp.experts", "gate_up_proj", stack))
    assert [n for n, _ in parts[:2]] == [LAYER0 + "mlp.experts.0.gate_proj.weight",
                                          LAYER0 + "mlp.experts.0.up_proj.weight"]
    assert len(parts) == 12 and all(t.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr()
                                    for _, t in parts)
    torch.testing.assert_close(parts[3][1], stack[1, :, 24:].T, atol=0, rtol=0)  # expert 1's up rows [I, H]


def _broken(moe_dir, tmp_path, edit) -> Path:
    return _write(moe_dir, tmp_path / "broken", edit(load_file(moe_dir / "model.safetensors")))


def test_fused_tensor_of_the_wrong_shape_names_it(moe_dir, tmp_path):
    def edit(sd):
        sd[LAYER0 + GATE_UP] = sd[LAYER0 + GATE_UP][:, :40].contiguous()
        return sd
    with pytest.raises(ModelLoadError, match=r"layers\.0\.mlp\.experts\.gate_up_proj' has shape \(6, 40, 64\), "
                                             r"expected \(6, 48, 64\)"):
        _load(_broken(moe_dir, tmp_path, edit))


def test_missing_expert_is_named(moe_dir, tmp_path):
    def edit(sd):
        sd = per_expert(sd)
        del sd[LAYER0 + "mlp.experts.3.up_proj.weight"]
        return sd
    with pytest.raises(ModelLoadError, match=r"missing tensor 'model\.language_model\.layers\.0\.mlp\.experts\.3\."
                                             r"up_proj\.weight'"):
        _load(_broken(moe_dir, tmp_path, edit))


def test_both_layouts_for_one_layer_is_a_duplicate(moe_dir, tmp_path):
    def edit(sd):
        return {**per_expert(sd), LAYER0 + DOWN: sd[LAYER0 + DOWN]}
    with pytest.raises(ModelLoadError, match=r"experts\.0\.down_proj\.weight' appears twice"):
        _load(_broken(moe_dir, tmp_path, edit))


def test_experts_for_a_dense_layer_are_unexpected(moe_dir, tmp_path):
    def edit(sd):  # layer 1 is dense (mlp_only_layers=[1])
        return {**sd, "model.language_model.layers.1." + DOWN: sd[LAYER0 + DOWN].clone()}
    with pytest.raises(ModelLoadError, match=r"unexpected tensor 'model\.language_model\.layers\.1\.mlp\.experts\."
                                             r"down_proj'"):
        _load(_broken(moe_dir, tmp_path, edit))
