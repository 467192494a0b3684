"""AsyncEngine: admission (reserve/release), streaming, cancel frees everything, drain."""

import asyncio

import pytest
from engine_helpers import ToyTokenizer, ToyVLM, build_input, image, text

from vlm_service.config import EngineConfig, LimitsConfig
from vlm_service.engine import AsyncEngine
from vlm_service.errors import DuplicateRequest, InvalidInput, Overloaded, ShuttingDown
from vlm_service.types import Finished, FinishReason, SamplingParams, TokenDelta


def make(max_waiting=4, **kw):
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_seqs=8, max_model_len=256, **kw)
    eng = AsyncEngine(ToyVLM(), ToyTokenizer(), cfg, LimitsConfig(max_waiting_requests=max_waiting), "cpu")
    eng.start()
    return eng


async def collect(eng, rid, inp, sp):
    eng.reserve(rid)
    return [o async for o in eng.generate(rid, inp, sp, 0.0)]


async def settle(eng, cond, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if cond(eng.stats()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine did not settle: {eng.stats()}")


def test_streams_end_with_one_finished_and_usage():
    async def main():
        eng = make()
        x = build_input(text(1, 5), image(2), text(3, 2))
        outs = await asyncio.gather(*[collect(eng, f"r{i}", x, SamplingParams(max_tokens=6, min_tokens=6))
                                      for i in range(3)])
        for o in outs:
            assert all(isinstance(d, TokenDelta) for d in o[:-1]) and isinstance(o[-1], Finished)
            assert sum(len(d.token_ids) for d in o[:-1]) == 6
            u = o[-1].usage
            assert (u.prompt_tokens, u.completion_tokens, u.image_tokens) == (len(x.input_ids), 6, 4)
            assert o[-1].timings.e2e_ms >= o[-1].timings.ttft_ms > 0
        await collect(eng, "r0", x, SamplingParams(max_tokens=1))  # id reuse after completion
        await eng.stop(drain=True)
        assert eng.stats().tracked_requests == 0
    asyncio.run(main())


def test_admission_limits_duplicates_and_shutdown():
    async def main():
        eng = make(max_waiting=2)
        eng.reserve("a")
        with pytest.raises(DuplicateRequest):
            eng.reserve("a")
        eng.reserve("b")
        with pytest.raises(Overloaded):
            eng.reserve("c")
        eng.release("b")
        eng.reserve("c")
        with pytest.raises(InvalidInput):
            async for _ in eng.generate("a", build_input(text(0, 300)), SamplingParams(), 0.0):
                pass
        assert eng.stats().reserved == 1  # "a" released by the failed generate
        eng.release("c")
        await eng.stop(drain=True)
        with pytest.raises(ShuttingDown):
            eng.reserve("d")
    asyncio.run(main())


def test_leaving_the_stream_early_aborts_and_frees_everything():
    async def main():
        eng = make()
        x = build_input(text(1, 9), image(4))
        eng.reserve("long")
        gen = eng.generate("long", x, SamplingParams(max_tokens=200, ignore_eos=True), 0.0)
        first = await gen.__anext__()
        assert isinstance(first, TokenDelta)
        await gen.aclose()
        await settle(eng, lambda s: s.kv_blocks_used == 0 and s.tracked_requests == 0 and s.running == 0)
        eng.reserve("other")  # abort via the API ends the stream with ABORT
        gen = eng.generate("other", x, SamplingParams(max_tokens=200, ignore_eos=True), 0.0)
        await gen.__anext__()
        assert eng.abort("other")
        tail = [o async for o in gen]
        assert isinstance(tail[-1], Finished) and tail[-1].finish_reason == FinishReason.ABORT
        await settle(eng, lambda s: s.kv_blocks_used == 0 and s.tracked_requests == 0)
        await eng.stop(drain=False)
    asyncio.run(main())
