"""AsyncEngine stream flow: an Abort that answered found=true always ends the stream with ABORT (whatever the engine
had produced and the reader not yet read), and a reader that stops reading pauses its request (no generation, no KV
blocks) until it catches up, then gets exactly the tokens it would have got."""

import asyncio

from engine_helpers import ToyTokenizer, ToyVLM, build_input, oracle_greedy, text

from vlm_service.config import EngineConfig, LimitsConfig
from vlm_service.engine import AsyncEngine
from vlm_service.types import Finished, FinishReason, SamplingParams, TokenDelta

LONG = SamplingParams(max_tokens=40, ignore_eos=True)


def make(max_buffered: int = 256, stalled_s: float = 0.0):
    cfg = EngineConfig(block_size=4, num_blocks=64, max_num_seqs=8, max_model_len=128)
    limits = LimitsConfig(max_waiting_requests=8, max_buffered_outputs=max_buffered,
                          stalled_stream_timeout_s=stalled_s)
    eng = AsyncEngine(ToyVLM(), ToyTokenizer(), cfg, limits, "cpu")
    eng.start()
    return eng


async def until(cond, timeout: float = 10.0):
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def final_queued(eng, rid: str) -> bool:
    """The engine has handed the request's Finished to its stream; the reader has not taken it."""
    return any(isinstance(item, Finished) for item in eng._streams[rid].queue._queue)


async def read_all(gen) -> list:
    return [o async for o in gen]


def tokens_of(outs) -> list[int]:
    return [t for o in outs if isinstance(o, TokenDelta) for t in o.token_ids]


# ---- Abort vs. the end of the stream ---------------------------------------------------------------------------

def test_abort_after_the_last_token_was_produced_but_not_read_ends_with_abort():
    async def main():
        eng = make()
        eng.reserve("r")
        gen = eng.generate("r", build_input(text(1, 5)), SamplingParams(max_tokens=3, ignore_eos=True), 0.0)
        first = await gen.__anext__()
        await until(lambda: final_queued(eng, "r"))  # the engine is done (LENGTH); the reader has not seen it
        assert eng.abort("r")
        rest = await read_all(gen)
        assert rest[-1].finish_reason == FinishReason.ABORT and rest[-1].matched_stop == ""
        assert len(tokens_of([first] + rest)) == 3
        await until(lambda: eng.stats().tracked_requests == 0)
        await eng.stop(drain=True)
    asyncio.run(main())


def test_abort_after_the_reader_took_the_finish_answers_not_found():
    async def main():
        eng = make()
        eng.reserve("r")
        gen = eng.generate("r", build_input(text(2, 5)), SamplingParams(max_tokens=2, ignore_eos=True), 0.0)
        outs = []
        while not outs or not isinstance(outs[-1], Finished):
            outs.append(await gen.__anext__())
        assert not eng.abort("r"), "the reader already has its LENGTH: found=true would be a lie"
        assert outs[-1].finish_reason == FinishReason.LENGTH
        await gen.aclose()
        await eng.stop(drain=True)
    asyncio.run(main())


def test_abort_while_preprocessing_ends_with_abort_not_a_full_run():
    async def main():
        eng = make()
        x = build_input(text(3, 6))
        eng.reserve("r")  # admitted; the server is decoding its images now
        assert eng.abort("r")
        outs = await read_all(eng.generate("r", x, LONG, 0.0))
        assert len(outs) == 1 and outs[0].finish_reason == FinishReason.ABORT
        assert (outs[0].usage.prompt_tokens, outs[0].usage.completion_tokens) == (len(x.input_ids), 0)
        assert eng.stats().tracked_requests == 0 and eng.stats().kv_blocks_used == 0
        eng.reserve("r")  # the id is free again
        assert tokens_of(await read_all(eng.generate("r", x, SamplingParams(max_tokens=2), 0.0)))
        await eng.stop(drain=True)
    asyncio.run(main())


# ---- backpressure ------------------------------------------------------------------------------------------------

def test_a_paused_reader_holds_no_blocks_stops_generating_and_resumes_exactly():
    async def main():
        eng = make(max_buffered=4)
        x = build_input(text(1, 9))
        eng.reserve("slow")
        gen = eng.generate("slow", x, LONG, 0.0)
        got = [await gen.__anext__()]
        await until(lambda: eng.stats().paused == 1)
        stream, seq = eng._streams["slow"], eng.engine.requests["slow"].seq
        assert eng.stats().kv_blocks_used == 0 and seq.block_table == []
        # other requests run many steps meanwhile: the paused one does not move and gets no blocks
        held = None
        for rid in ("other", "other2"):
            eng.reserve(rid)
            other = await read_all(eng.generate(rid, build_input(text(len(rid), 6)), LONG, 0.0))
            assert len(tokens_of(other)) == 40
            if held is None:  # (by now the token that was in flight when it paused has arrived too)
                held = stream.delivered
                assert 4 <= held <= 4 + 2, "bounded: the buffer, plus the tokens in flight when it paused"
            assert stream.delivered == held and eng.stats().paused == 1 and seq.block_table == []
            assert eng.stats().kv_blocks_used == 0
        got += await read_all(gen)  # catching up resumes it (recomputed from the prefix cache + the tail)
        assert tokens_of(got) == oracle_greedy(ToyVLM(), x, 40)
        assert got[-1].finish_reason == FinishReason.LENGTH and got[-1].usage.completion_tokens == 40
        await until(lambda: eng.stats().tracked_requests == 0 and eng.stats().paused == 0)
        await eng.stop(drain=True)
    asyncio.run(main())


def test_an_unbounded_buffer_never_pauses():
    async def main():
        eng = make(max_buffered=0)
        eng.reserve("r")
        gen = eng.generate("r", build_input(text(1, 9)), LONG, 0.0)
        first = await gen.__anext__()
        await until(lambda: final_queued(eng, "r"))  # it ran to the end with nobody reading
        assert eng.stats().paused == 0
        assert len(tokens_of([first] + await read_all(gen))) == 40
        await eng.stop(drain=True)
    asyncio.run(main())


def test_a_reader_stalled_past_the_timeout_is_aborted():
    async def main():
        eng = make(max_buffered=2, stalled_s=0.05)
        eng.reserve("r")
        gen = eng.generate("r", build_input(text(4, 9)), LONG, 0.0)
        first = await gen.__anext__()
        await until(lambda: final_queued(eng, "r"))  # aborted by the engine while nobody read
        rest = await read_all(gen)
        assert rest[-1].finish_reason == FinishReason.ABORT and len(tokens_of([first] + rest)) < 40
        await until(lambda: eng.stats().kv_blocks_used == 0 and eng.stats().paused == 0)
        await eng.stop(drain=True)
    asyncio.run(main())


def test_a_step_failure_outside_isolation_reaches_streams_as_a_generic_internal_error():
    from vlm_service.engine.isolation import GENERIC_MESSAGE
    from vlm_service.errors import InternalError

    async def main():
        eng = make()

        def broken_step():
            raise RuntimeError("scheduler state: secret 151936")

        eng.engine.step = broken_step
        eng.reserve("r")
        try:
            await read_all(eng.generate("r", build_input(text(1, 5)), SamplingParams(max_tokens=3), 0.0))
        except InternalError as exc:
            assert str(exc) == GENERIC_MESSAGE and exc.__cause__ is None
        else:
            raise AssertionError("the stream must fail")
        await eng.stop(drain=True)
    asyncio.run(main())
