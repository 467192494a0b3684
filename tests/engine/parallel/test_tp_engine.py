"""Tensor parallelism in-process (this test process is rank 0, the workers are real processes over gloo): greedy
tokens identical to TP=1 and logits within 1e-4 (fp32) for both dense families, with text and 1-2 images per
request, KV heads fewer than ranks at TP=4, and every block free afterwards."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tp_helpers import chats, record_logits, tiny_checkpoint, tp_config, tp_runtime

from vlm_service.demo.images import make_image
from vlm_service.types import SamplingParams

FAMILIES = ("qwen3_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tp")


@pytest.fixture(scope="module")
def images():
    return [make_image(np.random.default_rng(s), 64, 96, "noise", "png").data for s in range(2)]


def generate(ckpt, size, root, images, vision="data"):
    """Greedy tokens of three requests run together, every logits tensor of the run, and the engine after."""
    cfg = tp_config(ckpt, size, root / "state")
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, vision_parallel=vision))
    with tp_runtime(cfg) as rt:
        eng = rt.engine.engine
        seen = record_logits(eng)
        for i, msgs in enumerate(chats(images)):
            eng.add(str(i), rt.processor.process(msgs), SamplingParams(max_tokens=6, ignore_eos=True))
        tokens: dict[str, list[int]] = {}
        while eng.has_work():
            for out in eng.step():
                if hasattr(out, "token_ids"):
                    tokens.setdefault(out.request_id, []).extend(out.token_ids)
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks and not eng.requests
        return tokens, seen


@pytest.fixture(scope="module", params=FAMILIES)
def reference(request, root, images):
    ckpt = tiny_checkpoint(root, request.param)
    return ckpt, generate(ckpt, 1, root, images)


@pytest.mark.parametrize("size", [2, 4])
def test_tp_gives_tp1_tokens_and_logits(reference, size, root, images):
    ckpt, (tokens1, logits1) = reference
    tokens, logits = generate(ckpt, size, root, images)
    assert tokens == tokens1 and all(len(t) == 6 for t in tokens.values())
    assert len(logits) == len(logits1)
    for a, b in zip(logits, logits1):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_replicated_vision_gives_the_same_tokens(reference, root, images):
    ckpt, (tokens1, logits1) = reference
    if "qwen3" not in ckpt.name:
        pytest.skip("one family is enough for the vision fallback")
    tokens, logits = generate(ckpt, 2, root, images, vision="replicate")
    assert tokens == tokens1
    for a, b in zip(logits, logits1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
