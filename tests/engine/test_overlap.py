"""Overlapped scheduling (EngineConfig.overlap_scheduling): step N+1 is launched before step N's tokens are read
back. It must change nothing a request sees: tokens, text, logprobs, finish reasons, usage."""

import random

from engine_helpers import ToyTokenizer, ToyVLM, build_input, image, run_to_completion, text

from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.engine.sequence import PENDING
from vlm_service.types import FinishReason, SamplingParams


def engine(model, overlap: bool, **kw):
    cfg = dict(block_size=4, num_blocks=256, max_num_seqs=16, max_batched_tokens=64, overlap_scheduling=overlap)
    cfg.update(kw)
    return LLMEngine(model, ToyTokenizer(), EngineConfig(**cfg), "cpu")


def workload(n: int, seed: int):
    rnd = random.Random(seed)
    reqs = []
    for i in range(n):
        parts = [text(i, rnd.randint(2, 9))]
        if i % 3 == 1:
            parts += [image(200 + i, 4, 4), text(60 + i, 2)]
        sp = SamplingParams(temperature=rnd.choice([0.0, 0.9]), seed=i, max_tokens=rnd.randint(1, 14),
                            min_tokens=rnd.randint(0, 3), stop=rnd.choice([(), ("c",), ("ab", "f")]),
                            stop_token_ids=rnd.choice([(), (7,)]), logprobs=i % 2 == 0, top_logprobs=i % 4,
                            repetition_penalty=1.3 if i % 5 == 0 else 1.0)
        reqs.append((f"r{i}", build_input(*parts), sp))
    return reqs


def as_comparable(result):
    return {rid: (toks, txt, fin.finish_reason, fin.matched_stop, fin.usage) for rid, (toks, txt, fin) in result.items()}


def test_overlap_gives_what_the_serial_engine_gives():
    model = ToyVLM()
    reqs = workload(24, seed=1)
    serial = run_to_completion(engine(model, overlap=False), reqs)
    overlapped = run_to_completion(engine(model, overlap=True), reqs)
    assert as_comparable(overlapped) == as_comparable(serial)
    assert any(fin.finish_reason == FinishReason.STOP_SEQUENCE for _, _, fin in serial.values())
    for rid, (toks, _, fin) in overlapped.items():  # usage never counts the token sampled after the end
        assert fin.usage.completion_tokens == len(toks)


def test_logprobs_survive_the_overlap():
    model = ToyVLM()
    sp = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=3)
    got = {}
    for overlap in (False, True):
        eng = engine(model, overlap)
        eng.add("a", build_input(text(3, 5)), sp)
        lps = []
        while eng.has_work():
            lps += [o.logprobs for o in eng.step() if hasattr(o, "logprobs")]
        got[overlap] = lps
    assert got[True] == got[False] and len(got[True]) == 6 and len(got[True][0][0].top) == 3


def test_tokens_come_one_call_later_and_abort_drops_the_pending_one():
    model = ToyVLM()
    eng = engine(model, overlap=True)
    eng.add("a", build_input(text(1, 4)), SamplingParams(max_tokens=50, ignore_eos=True))
    assert eng.step() == []  # prefill launched; its token is still pending
    seq = eng.requests["a"].seq
    assert seq.output_ids == [PENDING]
    first = eng.step()  # decode launched; the prefill's token is read back
    assert [o.token_ids for o in first] == [(seq.output_ids[0],)] and seq.output_ids[1] == PENDING
    fin = eng.abort("a")
    assert fin.usage.completion_tokens == 1 and seq.output_ids == [first[0].token_ids[0]]
    assert eng.step() == [] and not eng.has_work()
    assert eng.block_manager.num_free_blocks == 256


def test_to_device_keeps_values_and_dtype():
    import torch

    from vlm_service.engine.transfer import tensor_to_device, to_device

    t = to_device([3, -1, 7], torch.int32, torch.device("cpu"))
    assert t.dtype == torch.int32 and t.tolist() == [3, -1, 7]
    host = torch.arange(6).view(2, 3)
    assert torch.equal(tensor_to_device(host, torch.device("cpu")), host)


def test_vision_time_reaches_the_finish_of_image_requests_only():
    model = ToyVLM()
    for overlap in (False, True):
        # a 16-token budget splits the image's prefill: the encode runs in a step that samples nothing
        eng = engine(model, overlap, max_batched_tokens=16)
        reqs = [("img", build_input(text(1, 20), image(7, 4, 4), text(2, 3)), SamplingParams(max_tokens=3)),
                ("txt", build_input(text(3, 5)), SamplingParams(max_tokens=3))]
        res = run_to_completion(eng, reqs)
        assert res["img"][2].timings.vision_ms > 0 and res["txt"][2].timings.vision_ms == 0
        assert not eng.runner._vision_timers
