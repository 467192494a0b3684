"""Scheduler: token budget, chunked prefill, max_num_seqs, preemption by recompute. No model."""

from vlm_service.engine.kv_cache import BlockManager
from vlm_service.engine.scheduler import Scheduler
from vlm_service.engine.sequence import Sequence, SeqStatus
from vlm_service.types import SamplingParams


def seq(rid, n):
    return Sequence(rid, list(range(1, n + 1)), SamplingParams(), 100)


def step(sched, token=7):
    """Schedule, pretend the model ran, append a token to every sampling chunk."""
    out = sched.schedule()
    sched.on_step_done(out)
    for c in out.chunks:
        if c.samples:
            c.seq.output_ids.append(token)
    return out


def test_chunked_prefill_respects_the_token_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_batched_tokens=10)
    a = seq("a", 25)
    sched.add(a)
    sizes = [step(sched).num_tokens for _ in range(3)]
    assert sizes == [10, 10, 5] and a.output_ids == [7]
    out = step(sched)
    assert [(c.seq.request_id, c.num_tokens, c.samples) for c in out.chunks] == [("a", 1, True)]


def test_decode_and_prefill_share_a_step():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_batched_tokens=16)
    a, b = seq("a", 5), seq("b", 30)
    sched.add(a)
    step(sched)
    sched.add(b)
    out = step(sched)
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("a", 1), ("b", 15)]
    assert not out.chunks[1].samples


def test_max_num_seqs_limits_running():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_batched_tokens=100)
    for i in range(3):
        sched.add(seq(str(i), 3))
    out = step(sched)
    assert len(out.chunks) == 2 and len(sched.waiting) == 1


def test_preemption_takes_the_newest_and_requeues_it_first():
    bm = BlockManager(4, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_batched_tokens=100)
    old, new = seq("old", 7), seq("new", 7)
    sched.add(old)
    sched.add(new)
    step(sched)  # both prefilled: 2 blocks each, pool full
    assert bm.num_free_blocks == 0
    step(sched)  # decode: tokens 8 fit in block 2 of each
    out = step(sched)  # token 9 needs a third block: "new" is preempted
    assert [s.request_id for s in out.preempted] == ["new"]
    assert new.status == SeqStatus.WAITING and sched.waiting[0] is new and new.num_computed_tokens == 0
    assert [c.seq.request_id for c in out.chunks] == ["old"]
    sched.finish(old)
    out = step(sched)  # "new" recomputes prompt + its generated tokens (its full blocks hit the prefix cache)
    c = out.chunks[0]
    assert c.seq is new and c.start == 8 and c.end == 9 and c.samples
    sched.finish(new)
    assert bm.num_free_blocks == 4 and not sched.has_work()


def test_a_lone_sequence_that_cannot_grow_preempts_itself_without_crashing():
    bm = BlockManager(2, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_batched_tokens=100)
    a = seq("a", 8)
    sched.add(a)
    step(sched)  # 8 tokens, 2 blocks; the 9th needs a third
    out = step(sched)
    assert out.preempted == [a] and out.is_empty and bm.num_free_blocks == 2
