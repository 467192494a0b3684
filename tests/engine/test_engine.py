"""LLMEngine on the toy model: batching, chunking, caches and seeds must not change what a request gets."""

import random

import pytest
from engine_helpers import ToyTokenizer, ToyVLM, build_input, image, oracle_greedy, run_to_completion, text

from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine, validate_sampling
from vlm_service.errors import InvalidInput
from vlm_service.types import FinishReason, SamplingParams

GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return ToyVLM()


def engine(model, **kw):
    cfg = dict(block_size=4, num_blocks=256, max_num_seqs=16, max_batched_tokens=512)
    cfg.update(kw)
    return LLMEngine(model, ToyTokenizer(), EngineConfig(**cfg), "cpu")


def mixed_inputs(n):
    """n prompts with 0, 1 or 2 images of various sizes."""
    out = []
    for i in range(n):
        imgs = [image(100 + 10 * i + j, 2 * (1 + (i + j) % 3), 4) for j in range(i % 3)]
        parts = [text(i, 3 + i % 5)]
        for img in imgs:
            parts += [img, text(50 + i, 2)]
        out.append(build_input(*parts))
    return out


def test_concurrent_mixed_requests_match_each_alone_and_the_oracle(model):
    inputs = mixed_inputs(16)
    together = run_to_completion(engine(model), [(str(i), x, GREEDY) for i, x in enumerate(inputs)])
    for i, x in enumerate(inputs):
        alone = run_to_completion(engine(model), [("a", x, GREEDY)])["a"][0]
        assert together[str(i)][0] == alone, i
        assert alone == oracle_greedy(model, x, 8), i
        assert together[str(i)][2].finish_reason == FinishReason.LENGTH


def test_chunked_prefill_splitting_an_image_gives_the_same_tokens(model):
    x = build_input(text(1, 3), image(7, 6, 8), text(2, 4))  # image tokens at [4, 16)
    whole = run_to_completion(engine(model), [("a", x, GREEDY)])["a"][0]
    for budget in (5, 7, 11):
        eng = engine(model, max_batched_tokens=budget)
        assert run_to_completion(eng, [("a", x, GREEDY)])["a"][0] == whole


def test_prefix_cache_hit_same_image_and_miss_other_image(model):
    eng = engine(model)
    x = build_input([], image(3, 4, 8), text(4, 9))  # the image starts in the first block
    first = run_to_completion(eng, [("a", x, GREEDY)])["a"]
    again = run_to_completion(eng, [("b", x, GREEDY)])["b"]
    assert again[0] == first[0]
    assert first[2].usage.cached_tokens == 0 and again[2].usage.cached_tokens >= 12
    other = build_input([], image(5, 4, 8), text(4, 9))
    miss = run_to_completion(eng, [("c", other, GREEDY)])["c"]
    assert miss[2].usage.cached_tokens == 0
    assert miss[0] == oracle_greedy(model, other, 8)


def test_vision_cache_and_one_encode_call_per_step(model):
    eng = engine(model)
    before = model.encode_calls
    xs = [build_input(text(i, 2), image(40 + i), image(60 + i), text(i, 2)) for i in range(3)]
    run_to_completion(eng, [(str(i), x, GREEDY) for i, x in enumerate(xs)])
    assert model.encode_calls == before + 1  # six images, admitted together, one ViT batch
    run_to_completion(eng, [("again", xs[0], GREEDY)])
    assert model.encode_calls == before + 1 and eng.runner.vision_cache.hits == 1  # the other image is in cached KV


@pytest.mark.parametrize("extra", [0, 3, 15])
def test_seeded_sampling_is_the_same_at_batch_1_4_16(model, extra):
    x = build_input(text(9, 6), image(11), text(10, 3))
    sp = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    alone = run_to_completion(engine(model), [("s", x, sp)])["s"][0]
    others = [(f"o{i}", y, SamplingParams(temperature=0.7, seed=i, max_tokens=5 + i))
              for i, y in enumerate(mixed_inputs(extra))]
    batch = run_to_completion(engine(model), others + [("s", x, sp)])["s"][0]
    assert batch == alone and len(alone) == 10


def test_prompt_over_context_is_refused(model):
    eng = engine(model, max_model_len=32)
    with pytest.raises(InvalidInput):
        eng.add("a", build_input(text(0, 40)), GREEDY)
    with pytest.raises(InvalidInput):  # sampling values: checked once, by the pipeline, with this function
        validate_sampling(SamplingParams(temperature=-1))
    res = run_to_completion(eng, [("c", build_input(text(0, 28)), SamplingParams(ignore_eos=True))])
    assert len(res["c"][0]) == 4 and res["c"][2].finish_reason == FinishReason.LENGTH


def test_randomized_run_with_aborts_stops_and_preemptions_leaves_nothing(model):
    rnd = random.Random(0)
    eng = engine(model, num_blocks=24, max_num_seqs=8, max_batched_tokens=48)
    inputs = mixed_inputs(12)
    live, next_id, finished, preempted = set(), 0, 0, 0
    while next_id < 500 or live:
        while next_id < 500 and len(live) < 20 and rnd.random() < 0.7:
            sp = SamplingParams(temperature=rnd.choice([0.0, 0.8]), seed=rnd.choice([None, next_id]),
                                max_tokens=rnd.randint(1, 12), stop=rnd.choice([(), ("ee",), ("d", "hh")]),
                                stop_token_ids=rnd.choice([(), (5, 9)]), min_tokens=rnd.randint(0, 2))
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
    assert preempted > 0 and finished > 400
    assert eng.block_manager.num_free_blocks == 24 and all(r == 0 for r in eng.block_manager.ref_counts)
    assert not eng.requests and not eng.scheduler.has_work()
