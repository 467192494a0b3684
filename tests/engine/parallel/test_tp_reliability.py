"""Under TP=2 (gloo, real worker process): a randomized run with aborts, stop rules, sampling and preemptions
leaves every block free and no request state, and the ranks still agree afterwards (a greedy request then gives
the TP=1 tokens). Blocks, prefix and vision caches are bookkept on rank 0 alone - the workers keep no per-request
state - so rank 0's pool being whole means every rank's is. VLM_TP_RANDOM_REQUESTS scales the run (500)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from tp_helpers import tiny_checkpoint, tp_config, tp_runtime

from vlm_service.demo.images import make_image
from vlm_service.types import ChatMessage, FinishReason, ImageInput, SamplingParams

ENGINE = dict(num_blocks=28, block_size=4, max_num_seqs=6, max_batched_tokens=40)
REQUESTS = int(os.environ.get("VLM_TP_RANDOM_REQUESTS", "500"))
GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tp-rel")


def _inputs(processor):
    imgs = [ImageInput(make_image(np.random.default_rng(s), 32, 48 + 16 * s, "noise", "png").data, "image/png")
            for s in range(3)]
    chats = [("hi",), ("a longer question about things",), (imgs[0], "what?"), (imgs[1], "and", imgs[2], "?"),
             (imgs[2], "describe")]
    return [processor.process((ChatMessage("user", c),)) for c in chats]


def _drain(eng) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while eng.has_work():
        for o in eng.step():
            if hasattr(o, "token_ids"):
                tokens.setdefault(o.request_id, []).extend(o.token_ids)
    return tokens


@pytest.fixture(scope="module")
def tp1_tokens(root):
    with tp_runtime(tp_config(tiny_checkpoint(root, "qwen3_vl"), 1, root / "s", **ENGINE)) as rt:
        inputs = _inputs(rt.processor)
        for i, inp in enumerate(inputs):
            rt.engine.engine.add(f"g{i}", inp, GREEDY)
        return _drain(rt.engine.engine)


@pytest.fixture(scope="module")
def tp2(root):
    with tp_runtime(tp_config(tiny_checkpoint(root, "qwen3_vl"), 2, root / "s", **ENGINE)) as rt:
        yield rt, _inputs(rt.processor)


def _assert_whole(eng):
    bm = eng.block_manager
    assert bm.num_free_blocks == bm.num_blocks and all(r == 0 for r in bm.ref_counts)
    assert not eng.requests and not eng.scheduler.has_work()


def _still_agrees(eng, inputs, tp1_tokens):
    for i, inp in enumerate(inputs):
        eng.add(f"g{i}", inp, GREEDY)
    assert _drain(eng) == tp1_tokens
    _assert_whole(eng)


def test_abort_mid_decode_frees_everything(tp2, tp1_tokens):
    rt, inputs = tp2
    eng = rt.engine.engine
    eng.add("a", inputs[3], SamplingParams(max_tokens=50, ignore_eos=True))
    eng.add("b", inputs[2], SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(4):
        eng.step()
    assert eng.abort("a").finish_reason == FinishReason.ABORT
    assert eng.abort("b").finish_reason == FinishReason.ABORT
    _drain(eng)
    _assert_whole(eng)
    _still_agrees(eng, inputs, tp1_tokens)


def test_randomized_run_with_aborts_and_preemptions_leaves_nothing(tp2, tp1_tokens):
    rt, inputs = tp2
    eng, rnd = rt.engine.engine, random.Random(0)
    live, next_id, finished, preempted = set(), 0, 0, 0
    while next_id < REQUESTS or live:
        while next_id < REQUESTS and len(live) < 10 and rnd.random() < 0.7:
            sp = SamplingParams(temperature=rnd.choice([0.0, 0.8]), seed=rnd.choice([None, next_id]),
                                max_tokens=rnd.randint(1, 12), stop=rnd.choice([(), ("e",)]),
                                min_tokens=rnd.randint(0, 2))
            eng.add(str(next_id), rnd.choice(inputs), sp)
            live.add(str(next_id))
            next_id += 1
        if live and rnd.random() < 0.08:
            victim = rnd.choice(sorted(live))
            assert eng.abort(victim).finish_reason == FinishReason.ABORT
            live.discard(victim)
        outs = eng.step()
        preempted += sum(1 for s in eng.scheduler.waiting if s.ever_scheduled)
        for o in outs:
            if not hasattr(o, "token_ids"):
                live.discard(o.request_id)
                finished += 1
    assert preempted > 0 and finished > REQUESTS * 0.7
    _assert_whole(eng)
    _still_agrees(eng, inputs, tp1_tokens)
