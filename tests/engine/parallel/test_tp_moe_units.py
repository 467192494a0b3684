"""MoE tensor parallelism without a process group: each rank's experts are its slices of every expert's
intermediate dim, read by get_slice from each checkpoint layout (per expert, fused, fused transposed as the hub
holds it); the ranks' fused-MoE outputs sum to the whole block's, on the reference and the Triton path; a
moe_intermediate_size that does not divide is refused; the 30B-A3B preset splits evenly over 8 ranks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tp_helpers import moe_checkpoint

import vit_backends
from kernels.moe import fused_moe
from vlm_service.errors import ModelLoadError
from vlm_service.models.loader import load_model
from vlm_service.models.parallel import TensorParallel

INTER, LAYOUTS = 48, ("fused", "per_expert", "hub")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tp-moe")


@pytest.fixture(scope="module")
def full(root):
    return _load(moe_checkpoint(root))


def _load(ckpt, tp=None):
    return load_model(ckpt, torch.float32, "cpu", vit_backends.create("sdpa"), tp=tp)


def _whole_reads(monkeypatch, ckpt) -> list[str]:
    """Names read whole (get_tensor) from now on."""
    from safetensors import safe_open

    handle_cls = type(safe_open(str(next(ckpt.glob("*.safetensors"))), framework="pt"))
    seen, real = [], handle_cls.get_tensor
    monkeypatch.setattr(handle_cls, "get_tensor", lambda self, n: seen.append(n) or real(self, n), raising=False)
    return seen


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank, size", [(1, 2), (2, 4)])
def test_rank_experts_are_slices_of_every_expert_read_by_get_slice(layout, rank, size, root, full, monkeypatch):
    ckpt = moe_checkpoint(root, layout)
    whole = _whole_reads(monkeypatch, ckpt)
    shard = _load(ckpt, TensorParallel(rank, size))
    assert not any("experts" in n or "down_proj" in n for n in whole), whole[:3]
    lo, hi = rank * INTER // size, (rank + 1) * INTER // size
    for layer in (0, 2):  # the sparse layers (layer 1 is dense)
        f, s = full.model.language_model.layers[layer].mlp, shard.model.language_model.layers[layer].mlp
        gate, up = f.experts.gate_up_proj.split(INTER, dim=1)  # [E, I, H] each
        torch.testing.assert_close(s.experts.gate_up_proj, torch.cat([gate[:, lo:hi], up[:, lo:hi]], 1), atol=0, rtol=0)
        torch.testing.assert_close(s.experts.down_proj, f.experts.down_proj[:, :, lo:hi], atol=0, rtol=0)
        torch.testing.assert_close(s.gate.weight, f.gate.weight, atol=0, rtol=0)  # the router is whole
    dense_f, dense_s = full.model.language_model.layers[1].mlp, shard.model.language_model.layers[1].mlp
    per = 128 // size
    torch.testing.assert_close(dense_s.down_proj.weight, dense_f.down_proj.weight[:, rank * per:(rank + 1) * per],
                               atol=0, rtol=0)
    assert (shard.spec.num_heads, shard.spec.num_kv_heads) == (4 // size, 1)  # at TP=4 a KV head on 2 ranks


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_rank_outputs_of_the_fused_moe_op_sum_to_the_whole_block(impl, root, full):
    shards = [_load(moe_checkpoint(root), TensorParallel(r, 4)) for r in range(4)]
    block = full.model.language_model.layers[2].mlp
    x = torch.randn(13, 64, generator=torch.Generator().manual_seed(0))  # 13: not a multiple of any block size
    logits = block.gate(x)
    want = fused_moe(x, logits, block.experts.gate_up_proj, block.experts.down_proj, 2, impl="reference")
    parts = [fused_moe(x, logits, e.gate_up_proj, e.down_proj, 2, impl=impl)
             for e in (s.model.language_model.layers[2].mlp.experts for s in shards)]
    assert all(p.abs().max() > 1e-3 * want.abs().max() for p in parts)  # every rank contributes
    torch.testing.assert_close(torch.stack(parts).sum(0), want, atol=1e-5, rtol=1e-4)


def test_a_moe_intermediate_size_that_does_not_divide_is_refused(root, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(moe_checkpoint(root), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["moe_intermediate_size"] = 50  # divides by 2, not by 4
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"moe_intermediate_size = 50 does not divide by "
                                             r"--tensor-parallel-size 4"):
        _load(ckpt, TensorParallel(0, 4))


def test_a_fused_expert_tensor_of_the_wrong_shape_names_it(root, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "bad"
    shutil.copytree(moe_checkpoint(root), ckpt)
    sd = load_file(ckpt / "model.safetensors")
    name = "model.language_model.layers.2.mlp.experts.down_proj"
    sd[name] = sd[name][:, :, :40].contiguous()
    save_file(sd, ckpt / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"layers\.2\.mlp\.experts\.down_proj.*\(8, 64, 40\), expected "
                                             r"\(8, 64, 48\)"):
        _load(ckpt, TensorParallel(1, 2))


def test_moe_preset_splits_evenly_over_8_ranks():
    name = "random:qwen3_vl_30b_a3b"
    full = load_model(name, torch.bfloat16, "meta", vit_backends.create("sdpa"))
    shard = load_model(name, torch.bfloat16, "meta", vit_backends.create("sdpa"), tp=TensorParallel(5, 8))

    def sizes(model, what):
        return sum(p.numel() for n, p in model.named_parameters() if what(n))

    experts = lambda n: ".mlp.experts." in n  # noqa: E731
    router = lambda n: n.endswith(".mlp.gate.weight")  # noqa: E731
    assert sizes(shard, experts) * 8 == sizes(full, experts) == 48 * 128 * 3 * 2048 * 768  # layers x E x 3 x H x I
    assert sizes(shard, router) == sizes(full, router) > 0
    e = shard.model.language_model.layers[7].mlp.experts
    assert tuple(e.gate_up_proj.shape) == (128, 2 * 96, 2048) and tuple(e.down_proj.shape) == (128, 2048, 96)
    assert (shard.spec.num_heads, shard.spec.num_kv_heads) == (4, 1)  # 4 KV heads < 8 ranks: replicated
