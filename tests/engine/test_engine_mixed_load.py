"""LLMEngine on the toy model under a mixed load: a short request behind a long image prefill gets its first token
within a step or two (short-first policy), every request's greedy tokens stay the oracle's, and the step log says
what each step carried."""

import logging

import pytest
from engine_helpers import ToyTokenizer, ToyVLM, build_input, image, oracle_greedy, text

from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.types import Finished, SamplingParams, TokenDelta

GREEDY = SamplingParams(max_tokens=6, ignore_eos=True)
POLICY_ON = dict(short_prefill_tokens=16, mixed_long_prefill_tokens=8, max_prefill_hold_steps=3)
POLICY_OFF = dict(short_prefill_tokens=0)


@pytest.fixture(scope="module")
def model():
    return ToyVLM()


def engine(model, **kw):
    cfg = dict(block_size=4, num_blocks=512, max_num_seqs=16, max_batched_tokens=32)
    cfg.update(kw)
    return LLMEngine(model, ToyTokenizer(), EngineConfig(**cfg), "cpu")


def long_input(seed):
    return build_input(text(seed, 3), image(seed, 24, 24), text(seed + 1, 4))  # 144 image tokens, ~153 in all


def short_input(seed):
    return build_input(text(seed, 3), image(seed, 2, 4), text(seed + 1, 2))  # 12 tokens


def drive(eng, arrivals, max_steps=400):
    """arrivals: {call index: [(rid, input)]} added before that step() call. Returns rid -> (tokens, launches: the
    SchedulerOutputs scheduled after its add up to the one that sampled its first token)."""
    toks, launches, sampled = {}, {}, set()
    schedule = eng.scheduler.schedule

    def recording():
        out = schedule()
        for rid in launches:
            if rid not in sampled:
                launches[rid].append(out)
                if any(c.seq.request_id == rid and c.samples for c in out.chunks):
                    sampled.add(rid)
        return out

    eng.scheduler.schedule = recording
    for i in range(max_steps):
        for rid, x in arrivals.get(i, []):
            eng.add(rid, x, GREEDY)
            toks[rid], launches[rid] = [], []
        if i > max(arrivals) and not eng.has_work():
            break
        for out in eng.step():
            if isinstance(out, TokenDelta):
                toks[out.request_id] += out.token_ids
            else:
                assert isinstance(out, Finished), out
    return {rid: (toks[rid], launches[rid]) for rid in toks}


@pytest.mark.parametrize("overlap", [True, False])
def test_short_requests_behind_long_image_prefills_come_first_and_tokens_stay_the_oracles(model, overlap):
    arrivals = {0: [("L1", long_input(1)), ("L2", long_input(2))], 2: [("S1", short_input(3))],
                6: [("S2", short_input(4))], 7: [("L3", long_input(5))], 8: [("S3", short_input(6))]}
    on = drive(engine(model, overlap_scheduling=overlap, **POLICY_ON), arrivals)
    off = drive(engine(model, overlap_scheduling=overlap, **POLICY_OFF), arrivals)
    for rid, (tokens, _) in on.items():  # scheduling order changes no request's tokens
        assert tokens == off[rid][0] == oracle_greedy(model, dict(sum(arrivals.values(), []))[rid], 6), rid
    for rid in ("S1", "S2", "S3"):
        steps = on[rid][1]
        # prefilled and sampled in the first step scheduled after it arrived, with at most the mixed share of long
        # prefill tokens beside it
        assert len(steps) == 1 and steps[0].mixed and steps[0].long_tokens <= 8, rid
        assert len(off[rid][1]) > 2, rid  # arrival order: it waited behind the long prefill steps


def test_no_step_is_launched_behind_a_long_prefill_step(model):
    """After a step with long prefill work, the next step() only reads it back: a request that arrives meanwhile is
    in the next step launched, not behind one launched ahead (overlap)."""
    eng = engine(model, **POLICY_ON)
    calls = []
    schedule = eng.scheduler.schedule
    eng.scheduler.schedule = lambda: calls.append(schedule()) or calls[-1]
    eng.add("L", long_input(1), GREEDY)
    scheduled_after, heavy = [], False
    for _ in range(60):
        before = len(calls)
        eng.step()
        if heavy:  # the previous call launched long prefill work
            scheduled_after.append(len(calls) - before)
        heavy = len(calls) > before and calls[-1].long_tokens > 8
        if not eng.has_work():
            break
    assert scheduled_after and set(scheduled_after) == {0}
    assert not eng.has_work() and eng.block_manager.num_free_blocks == 512


def test_step_log_lines(model, caplog):
    eng = engine(model, step_log=True, **POLICY_ON)
    with caplog.at_level(logging.INFO, logger="vlm_service.steps"):
        drive(eng, {0: [("L", long_input(1))], 1: [("S", short_input(3))]})
    fields = [r.fields for r in caplog.records if r.name == "vlm_service.steps"]
    steps = [f for f in fields if "tokens" in f]
    firsts = {f["first_token"]: f for f in fields if "first_token" in f}
    assert [f["step"] for f in steps] == list(range(1, len(steps) + 1))
    assert all(f["tokens"] <= 32 and f["tokens"] == f["prefill_tokens"] + f["decodes"] for f in steps)
    assert all(f["launch_ms"] >= 0 and f["read_ms"] >= 0 for f in steps)
    assert steps[0]["since_prev_ms"] is None and all(f["since_prev_ms"] >= 0 for f in steps[1:])
    assert steps[0]["admitted"] == ["L"] and steps[0]["new_visual_tokens"] == 144 and not steps[0]["mixed"]
    assert steps[1]["admitted"] == ["S"] and steps[1]["mixed"] and steps[1]["held"] == 1
    assert firsts["S"]["first_step"] == 2 and firsts["S"]["steps_to_first_token"] == 1
    assert firsts["L"]["steps_to_first_token"] > 3


def test_step_log_off_writes_nothing(model, caplog):
    with caplog.at_level(logging.INFO, logger="vlm_service.steps"):
        drive(engine(model, **POLICY_ON), {0: [("S", short_input(3))]})
    assert not [r for r in caplog.records if r.name == "vlm_service.steps"]
