"""Short-first prefill policy (prefill_policy.py) in the Scheduler: order, caps, no starvation, budget. No model."""

import itertools
import random

import pytest

from vlm_service.engine.kv_cache import BlockManager
from vlm_service.engine.prefill_policy import PrefillPolicy, after_new_visual, before_new_visual
from vlm_service.engine.scheduler import Scheduler
from vlm_service.engine.sequence import Sequence, SeqStatus, VisualSpan
from vlm_service.types import SamplingParams

POLICY = PrefillPolicy(short_tokens=16, mixed_long_tokens=8, max_hold_steps=3)


_prompts = itertools.count()


def seq(rid, n, max_tokens=4, image_at=None, image_tokens=0):
    """n prompt tokens of its own (no prefix-cache hits between them); optionally one image span."""
    visuals = (VisualSpan(f"h-{rid}", image_at, image_tokens),) if image_at is not None else ()
    base = 1000 * next(_prompts)
    return Sequence(rid, list(range(base, base + n)), SamplingParams(), max_tokens, visuals)


def sched(policy=POLICY, budget=64, blocks=256, max_num_seqs=16):
    return Scheduler(BlockManager(blocks, 4), max_num_seqs=max_num_seqs, max_batched_tokens=budget, policy=policy)


def step(s, token=7, check=None):
    """Schedule, pretend the model ran, append a token to every sampling chunk; finish what reached max_tokens.
    check(out): called before the step's bookkeeping changes the sequences."""
    out = s.schedule()
    if check is not None:
        check(out)
    s.on_step_done(out)
    for c in out.chunks:
        if c.samples:
            c.seq.output_ids.append(token)
            if len(c.seq.output_ids) >= c.seq.max_tokens:
                s.finish(c.seq)
    return out


def chunks(out):
    return [(c.seq.request_id, c.num_tokens, c.samples) for c in out.chunks]


@pytest.mark.parametrize("policy, short_first", [(POLICY, True), (None, False)])
def test_a_short_request_behind_long_prefills_gets_its_first_token_in_the_next_step(policy, short_first):
    s = sched(policy)
    longs = [seq("L1", 300), seq("L2", 300)]
    for x in longs:
        s.add(x)
    step(s)  # both long prefills running, the budget all theirs
    short = seq("S", 12)
    s.add(short)
    out = step(s)
    assert out.num_tokens <= 64
    got = dict((rid, (n, samples)) for rid, n, samples in chunks(out))
    if short_first:  # whole prompt in this step, sampled; the long ones share at most 8 tokens
        assert got["S"] == (12, True) and out.mixed
        assert sum(n for rid, (n, _) in got.items() if rid != "S") <= 8
        assert short.output_ids == [7]
    else:  # arrival order: the running long prefills take the whole budget, the short one waits
        assert "S" not in got and short.status == SeqStatus.WAITING


def test_without_a_short_one_the_long_prefills_get_the_whole_budget():
    s = sched()
    s.add(seq("L1", 300))
    s.add(seq("L2", 300))
    outs = [step(s) for _ in range(3)]
    assert all(o.num_tokens == 64 and not o.mixed for o in outs)


def test_a_waiting_short_request_overtakes_a_waiting_long_one():
    s = sched()
    s.add(seq("L", 300))
    s.add(seq("S", 10))
    out = step(s)
    assert chunks(out) == [("S", 10, True), ("L", 8, False)]  # L admitted behind it with the mixed-step share


def test_a_mixed_step_starts_no_new_image_of_a_long_prefill():
    s = sched(PrefillPolicy(short_tokens=16, mixed_long_tokens=32, max_hold_steps=3))
    big = seq("L", 200, image_at=5, image_tokens=150)
    s.add(big)
    s.add(seq("S", 10))
    out = step(s)
    assert chunks(out) == [("S", 10, True), ("L", 5, False)]  # L stops just before its image
    out = step(s)  # S decodes (not a prefill): not mixed, L's chunk starts its image and ends 32 tokens into it
    assert not out.mixed and chunks(out) == [("S", 1, True), ("L", 32, False)]
    out = step(s)  # the image's encode is done: the next chunk is a full one
    assert chunks(out) == [("S", 1, True), ("L", 63, False)]


def test_after_new_visual_ends_a_chunk_soon_after_a_new_item_starts():
    x = Sequence("v", list(range(100)), SamplingParams(), 4,
                 (VisualSpan("a", 10, 20, 0, 0), VisualSpan("a", 40, 20, 20, 0), VisualSpan("b", 70, 10, 0, 1)))
    assert after_new_visual(x, 8, 4) == 8  # the chunk does not reach item a
    assert after_new_visual(x, 50, 4) == 14  # it starts a: 4 tokens into it
    x.num_computed_tokens = 10
    assert after_new_visual(x, 50, 0) == 1  # at least the item's first token
    x.num_computed_tokens = 14  # a started; b is at 70
    assert after_new_visual(x, 50, 4) == 50 and after_new_visual(x, 80, 4) == 60


def test_before_new_visual_cuts_only_at_items_not_yet_reached():
    x = Sequence("v", list(range(100)), SamplingParams(), 4,
                 (VisualSpan("a", 10, 20, 0, 0), VisualSpan("a", 40, 20, 20, 0), VisualSpan("b", 70, 10, 0, 1)))
    assert before_new_visual(x, 50) == 10
    x.num_computed_tokens = 10
    assert before_new_visual(x, 50) == 0  # the next token is item a's first
    x.num_computed_tokens = 30  # item a started: its second span needs no new encode; item b does
    assert before_new_visual(x, 60) == 40 and before_new_visual(x, 20) == 20
    x.num_computed_tokens = 80
    assert before_new_visual(x, 20) == 20


def test_long_prefills_are_not_starved_by_a_stream_of_short_ones():
    s = sched()
    longs = [seq("L1", 400), seq("L2", 400)]
    for x in longs:
        s.add(x)
    full_chunk_gaps, since_full = [], 0
    for i in range(200):
        s.add(seq(f"S{i}", 10, max_tokens=1))  # a new short prefill in every step
        out = step(s)
        assert out.num_tokens <= 64 and out.mixed
        held = [c for c in out.chunks if c.seq in longs and c.num_tokens > 8]
        since_full = 0 if held else since_full + 1
        full_chunk_gaps.append(since_full)
        assert all(x.held_steps <= POLICY.max_hold_steps for x in longs)
        if all(x.output_ids for x in longs):
            break
    assert all(x.output_ids for x in longs), "the long prefills never finished"
    assert max(full_chunk_gaps) <= POLICY.max_hold_steps  # a long one goes in full at least every 4th step


def test_every_request_short_keeps_arrival_order_exactly():
    """The usual load (similar requests, all short): the same steps as with the policy off."""
    def trace(policy):
        rng = random.Random(5)
        s = sched(policy, budget=40, blocks=64)
        log, n = [], 0
        for t in range(120):
            if n < 30 and rng.random() < 0.6:
                s.add(seq(f"r{n}", rng.randint(3, 16), max_tokens=rng.randint(1, 6)))
                n += 1
            out = step(s)
            log.append(chunks(out) + [("preempted", [p.request_id for p in out.preempted])])
        assert not s.has_work()
        return log

    assert trace(POLICY) == trace(None)


@pytest.mark.parametrize("seed", range(6))
def test_random_mixed_load_within_budget_and_everything_finishes(seed):
    """Small KV pool (preemptions), long and short prompts with images, arrivals at random steps."""
    rng = random.Random(seed)
    budget = 48
    s = sched(budget=budget, blocks=90, max_num_seqs=6)
    made, before = [], {}

    def check(out):
        assert out.num_tokens <= budget
        assert all(c.num_tokens > 0 and c.end <= c.seq.num_tokens for c in out.chunks)
        if out.mixed:  # long = judged before the step (pending, held steps); spans are one item each here
            longs = [c for c in out.chunks if not before[id(c.seq)]]
            assert sum(c.num_tokens for c in longs) <= POLICY.mixed_long_tokens
            assert not any(c.seq.visuals_in(c.start, c.end) and c.seq.visuals[0].offset >= c.start for c in longs)

    for t in range(2000):
        if len(made) < 25 and rng.random() < 0.3:
            n = rng.choice([rng.randint(4, 16), rng.randint(40, 150)])
            img = rng.randint(0, n - 10) if n > 20 and rng.random() < 0.5 else None
            made.append(seq(f"r{len(made)}", n, rng.randint(1, 5), img, 8 if img is not None else 0))
            s.add(made[-1])
        before = {id(x): s.policy.is_short(x) for x in made}
        out = step(s, check=check)
        if len(made) == 25 and not s.has_work():
            break
    assert all(x.status == SeqStatus.FINISHED and len(x.output_ids) == x.max_tokens for x in made)
    assert s.bm.num_free_blocks == 90


@pytest.mark.parametrize("policy", [POLICY, None])
def test_preemption_with_the_policy_on_takes_the_newest_and_requeues_it_first(policy):
    """As test_scheduler's preemption test (same prompts, so "new" recomputes from "old"'s cached blocks)."""
    bm = BlockManager(4, 4)
    s = Scheduler(bm, max_num_seqs=8, max_batched_tokens=100, policy=policy)
    old, new = (Sequence(rid, list(range(1, 8)), SamplingParams(), 100) for rid in ("old", "new"))
    s.add(old)
    s.add(new)
    step(s)
    step(s)
    out = step(s)  # token 9 needs a third block: "new" is preempted
    assert [p.request_id for p in out.preempted] == ["new"] and s.waiting[0] is new
    assert chunks(out) == [("old", 1, True)]
    s.finish(old)
    out = step(s)  # recomputed from the prefix cache: only the last token runs
    c = out.chunks[0]
    assert c.seq is new and c.start == 8 and c.end == 9 and c.samples


def test_pause_and_resume_with_the_policy_on():
    s = sched()
    a, b = seq("a", 12, 100), seq("b", 12, 100)
    s.add(a)
    s.add(b)
    step(s)
    s.pause(a)
    assert a.status == SeqStatus.PAUSED and not a.block_table
    out = step(s)
    assert chunks(out) == [("b", 1, True)]
    s.resume(a)
    out = step(s)  # next to be admitted; its full blocks come back from the prefix cache
    assert chunks(out) == [("b", 1, True), ("a", 1, True)] and out.chunks[1].start == 12


def test_a_short_request_that_cannot_be_admitted_does_not_hold_the_long_prefills_back():
    s = sched(max_num_seqs=1)
    s.add(seq("L", 300))
    step(s)  # running: the batch is full
    s.add(seq("S", 10))
    out = step(s)
    assert not out.mixed and chunks(out) == [("L", 64, False)]


def test_a_long_prefill_going_in_full_for_its_age_is_long_work_not_a_short_prefill():
    s = sched(PrefillPolicy(short_tokens=16, mixed_long_tokens=8, max_hold_steps=1))
    s.add(seq("L1", 300))
    s.add(seq("L2", 300))
    step(s)
    s.add(seq("S", 10))
    assert step(s).mixed  # both long ones held once: aged
    out = step(s)  # S decodes; the aged ones go in full, and make no mixed step of their own
    assert not out.mixed and out.long_tokens == out.num_tokens - 1 == 63


def test_decodes_go_before_running_long_prefill_chunks():
    s = sched()
    s.add(seq("L", 300))
    step(s)
    s.add(seq("S", 10))
    step(s)  # mixed: S prefilled
    out = step(s)
    assert chunks(out) == [("S", 1, True), ("L", 63, False)]
