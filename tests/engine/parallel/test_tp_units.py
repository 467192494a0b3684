"""The pieces of tensor parallelism that need no process group: head and vocab shards, the loader reading only
each rank's slices, the vision shares and the step message."""

from __future__ import annotations

import pytest
import torch
from tp_helpers import tiny_checkpoint

import vit_backends
from vlm_service.engine.attention import BatchLayout
from vlm_service.engine.parallel.step import pack_step, unpack_step
from vlm_service.engine.parallel.vision import shares
from vlm_service.errors import ModelLoadError
from vlm_service.models.common import MultimodalEmbeds
from vlm_service.models.loader import load_model
from vlm_service.models.parallel import HeadShard, TensorParallel, head_shard


def test_head_shards_replicate_kv_heads_when_fewer_than_ranks():
    assert [head_shard(4, 2, TensorParallel(r, 4)) for r in range(4)] == [HeadShard(1, 1, r, r // 2) for r in range(4)]
    assert head_shard(64, 8, TensorParallel(1, 2)) == HeadShard(32, 4, 32, 4)
    assert head_shard(64, 8, TensorParallel(7, 8)) == HeadShard(8, 1, 56, 7)
    assert head_shard(4, 2, None) == HeadShard(4, 2, 0, 0)
    with pytest.raises(ModelLoadError, match="num_attention_heads = 4 does not divide"):
        head_shard(4, 2, TensorParallel(0, 8))
    with pytest.raises(ModelLoadError, match="multiple of num_key_value_heads"):
        head_shard(12, 4, TensorParallel(0, 6))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck"), "qwen3_vl")


def _load(ckpt, tp=None):
    return load_model(ckpt, torch.float32, "cpu", vit_backends.create("sdpa"), tp=tp)


def test_rank_shards_are_slices_of_the_full_model_read_by_get_slice(ckpt, monkeypatch):
    full = _load(ckpt)
    from safetensors import safe_open

    handle_cls = type(safe_open(str(next(ckpt.glob("*.safetensors"))), framework="pt"))
    read_whole = []
    real = handle_cls.get_tensor
    monkeypatch.setattr(handle_cls, "get_tensor", lambda self, n: read_whole.append(n) or real(self, n),
                        raising=False)
    r = 3
    shard = _load(ckpt, TensorParallel(r, 4))
    assert not any(n.endswith(("q_proj.weight", "k_proj.weight", "o_proj.weight", "down_proj.weight",
                               "embed_tokens.weight", "lm_head.weight", "gate_proj.weight")) for n in read_whole)
    f, s = full.model.language_model.layers[1], shard.model.language_model.layers[1]
    hd = 16
    q, k = f.self_attn.qkv_proj.weight.split([64, 32, 32])[:2]
    sq, sk, _ = s.self_attn.qkv_proj.weight.split(s.self_attn.qkv_proj.sizes)
    assert torch.equal(sq, q[r * hd:(r + 1) * hd]) and torch.equal(sk, k[1 * hd:2 * hd])  # kv head 3 // 2
    assert torch.equal(s.self_attn.o_proj.weight, f.self_attn.o_proj.weight[:, r * hd:(r + 1) * hd])
    assert torch.equal(s.mlp.down_proj.weight, f.mlp.down_proj.weight[:, r * 32:(r + 1) * 32])
    vocab, per = full.spec.vocab_size, -(-full.spec.vocab_size // 4)
    emb = shard.model.language_model.embed_tokens.weight
    assert emb.shape[0] == per and vocab % 4  # the demo vocab pads the last rank
    assert torch.equal(emb[:vocab - r * per], full.model.language_model.embed_tokens.weight[r * per:])
    assert not emb[vocab - r * per:].any()
    assert (shard.spec.num_heads, shard.spec.num_kv_heads) == (1, 1)
    assert torch.equal(shard.model.visual.patch_embed.proj.weight, full.model.visual.patch_embed.proj.weight)


def test_shares_split_images_contiguously_by_patches():
    assert shares([4, 4, 4, 4], 2) == [(0, 2), (2, 4)]
    assert shares([100, 4, 4], 2) == [(0, 1), (1, 3)]
    assert shares([8], 4) == [(0, 1), (1, 1), (1, 1), (1, 1)]
    bounds = shares([5, 1, 7, 3, 2, 9], 3)
    assert bounds[0][0] == 0 and bounds[-1][1] == 6 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_step_message_round_trip():
    ids, pos = torch.tensor([5, 6, 7]), torch.arange(9).reshape(3, 3)
    layout = BatchLayout([2, 1], [2, 9], [[0], [3, 4, 5]], torch.tensor([0, 1, 20]))
    mask = torch.tensor([False, True, False])
    mm = MultimodalEmbeds(torch.ones(1, 4), mask, [2 * torch.ones(1, 4)], torch.tensor([1]))
    meta, tensors = pack_step(ids, pos, layout, torch.tensor([1, 2]), mm, False)
    got = unpack_step(meta, list(tensors))
    assert torch.equal(got[0], ids) and torch.equal(got[1], pos) and torch.equal(got[3], torch.tensor([1, 2]))
    assert got[2].block_tables == layout.block_tables and torch.equal(got[2].slot_mapping, layout.slot_mapping)
    assert torch.equal(got[4].mask, mask) and torch.equal(got[4].deepstack[0], 2 * torch.ones(1, 4))
    assert got[5] is False


def test_tensor_parallel_flags_and_env(monkeypatch):
    import argparse

    from vlm_service.server.options import add_serve_flags, config_from_args

    def parse(*argv):
        parser = argparse.ArgumentParser()
        add_serve_flags(parser)
        return config_from_args(parser.parse_args(list(argv)))

    assert parse().parallel.tensor_parallel_size == 1
    monkeypatch.setenv("VLM_TENSOR_PARALLEL_SIZE", "4")
    cfg = parse("--vision-parallel", "replicate")
    assert (cfg.parallel.tensor_parallel_size, cfg.parallel.vision_parallel) == (4, "replicate")
    assert parse("--tensor-parallel-size", "2").parallel.tensor_parallel_size == 2
    with pytest.raises(SystemExit):  # argparse: invalid choice, exit 2
        parse("--vision-parallel", "weights")
    monkeypatch.setenv("VLM_VISION_PARALLEL", "weights")  # env values bypass argparse's choices: the config refuses
    with pytest.raises(ValueError, match="vision_parallel must be data or replicate"):
        parse()


@pytest.mark.parametrize("name, billions", [("random:qwen2_5_vl_72b", 73.41), ("random:qwen3_vl_32b", 33.36)])
def test_large_presets_split_evenly_over_8_ranks(name, billions):
    def sizes(model):
        text = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("model.visual."))
        return text, sum(p.numel() for p in model.model.visual.parameters())

    full = load_model(name, torch.bfloat16, "meta", vit_backends.create("sdpa"))
    assert abs(sum(sizes(full)) / 1e9 - billions) < 0.01
    shard = load_model(name, torch.bfloat16, "meta", vit_backends.create("sdpa"), tp=TensorParallel(5, 8))
    (text, vis), (text8, vis8) = sizes(full), sizes(shard)
    norms = sum(p.numel() for n, p in full.named_parameters() if p.dim() == 1 and "visual" not in n
                and "bias" not in n)  # RMSNorm weights: whole on every rank
    assert vis8 == vis and (text8 - norms) * 8 == text - norms
    assert (shard.spec.num_heads, shard.spec.num_kv_heads) == (8, 1)


def test_a_failure_after_the_workers_joined_fails_the_group():
    from vlm_service.engine.parallel.group import fatal_to_group

    reasons = []
    with pytest.raises(ValueError, match="boom"):
        with fatal_to_group(reasons.append, "step"):
            raise ValueError("boom")
    assert reasons == ["tensor-parallel step failed on rank 0: ValueError: boom"]
    with fatal_to_group(reasons.append, "step"):
        pass
    assert len(reasons) == 1
