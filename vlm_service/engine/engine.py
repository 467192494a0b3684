"""LLMEngine: the synchronous core. add / abort / step, where step = schedule -> run -> sample -> postprocess."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vlm_service.config import EngineConfig
from vlm_service.engine.detokenizer import OutputState
from vlm_service.engine.kv_cache import BlockManager
from vlm_service.engine.model_runner import ModelRunner, PrevTokens, model_dtype, pool_num_blocks
from vlm_service.engine.sampler import PendingSample, SampleRow, sample_async
from vlm_service.engine.scheduler import Scheduler, SchedulerOutput
from vlm_service.engine.sequence import PENDING, ImageSpan, Sequence
from vlm_service.errors import DuplicateRequest, InvalidInput
from vlm_service.models.common import VLModel
from vlm_service.types import (EngineOutput, Finished, FinishReason, ProcessedInput, SamplingParams, Timings,
                               TokenDelta, Usage)


@dataclass
class _Tracked:
    seq: Sequence
    out: OutputState
    generator: torch.Generator | None


@dataclass
class _Launch:
    """A launched step: the tracked request of each sampled row (None once dropped) and its pending tokens."""

    rows: list[_Tracked | None]
    sample: PendingSample | None


def validate_sampling(p: SamplingParams) -> None:
    """Raise InvalidInput naming the sampling field a user got wrong."""
    checks = [
        (p.temperature >= 0, "temperature", "must be >= 0"),
        (0 < p.top_p <= 1, "top_p", "must be in (0, 1]"),
        (p.top_k >= 0, "top_k", "must be >= 0"),
        (0 <= p.min_p <= 1, "min_p", "must be in [0, 1]"),
        (p.max_tokens is None or p.max_tokens >= 1, "max_tokens", "must be >= 1"),
        (p.min_tokens >= 0, "min_tokens", "must be >= 0"),
        (p.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
        (0 <= p.top_logprobs <= 20, "top_logprobs", "must be in [0, 20]"),
        (p.seed is None or p.seed >= 0, "seed", "must be >= 0"),
    ]
    for ok, name, why in checks:
        if not ok:
            raise InvalidInput(f"sampling.{name} {why}", field=f"sampling.{name}")


class LLMEngine:
    """Continuous-batching generation over a paged KV pool (see scheduler.py, model_runner.py)."""

    def __init__(self, model: VLModel, tokenizer, cfg: EngineConfig, device: torch.device | str = "cpu"):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.device = torch.device(device)
        spec = model.spec
        num_blocks = pool_num_blocks(cfg, spec, model_dtype(model), self.device)
        # a request alone must always fit in the pool, or preemption could never make room for it
        self.max_model_len = min(cfg.max_model_len or spec.max_position_embeddings, num_blocks * cfg.block_size)
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_cache)
        self.scheduler = Scheduler(self.block_manager, cfg.max_num_seqs, cfg.max_batched_tokens)
        self.runner = ModelRunner(model, cfg, self.device, num_blocks)
        self.eos_ids = tuple(spec.eos_token_ids)
        self.requests: dict[str, _Tracked] = {}
        self._pending: _Launch | None = None  # the launched step whose tokens are not read back yet

    # ---- requests --------------------------------------------------------------------------------------------
    def check(self, processed: ProcessedInput, sampling: SamplingParams) -> int:
        """Validate a request; returns its completion limit (max_tokens capped by the context)."""
        validate_sampling(sampling)
        n = len(processed.input_ids)
        if n == 0:
            raise InvalidInput("the prompt is empty", field="messages")
        if n >= self.max_model_len:
            raise InvalidInput(f"prompt has {n} tokens; the context holds {self.max_model_len} (prompt + at least "
                               "one generated token)", field="messages")
        if sampling.max_tokens is not None and sampling.max_tokens > self.max_model_len:
            raise InvalidInput(f"sampling.max_tokens: {sampling.max_tokens} is more than the whole context "
                               f"({self.max_model_len} tokens)", field="sampling.max_tokens")
        room = self.max_model_len - n  # a max_tokens that fits the context but not beside this prompt is capped
        return min(sampling.max_tokens, room) if sampling.max_tokens is not None else room

    def add(self, request_id: str, processed: ProcessedInput, sampling: SamplingParams,
            arrival_time: float | None = None) -> None:
        if request_id in self.requests:
            raise DuplicateRequest(f"request {request_id!r} is already in flight", field="request_id")
        max_tokens = self.check(processed, sampling)
        spans = tuple(ImageSpan(img.content_hash, img.offset, img.num_tokens) for img in processed.images)
        seq = Sequence(request_id, list(processed.input_ids), sampling, max_tokens, spans, processed)
        seq.times.arrival = arrival_time or time.monotonic()  # 0.0 / None: unknown, count from now
        gen = None
        if not sampling.greedy and sampling.seed is None:
            gen = torch.Generator(device=self.device)
            gen.seed()
        self.requests[request_id] = _Tracked(seq, OutputState(self.tokenizer, sampling, self.eos_ids, max_tokens), gen)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> Finished | None:
        """Drop a request at once (blocks freed); returns its ABORT Finished, or None when it is not in flight."""
        tracked = self.requests.pop(request_id, None)
        if tracked is None:
            return None
        self.scheduler.finish(tracked.seq)
        return self._finished(tracked, FinishReason.ABORT, "")

    def has_work(self) -> bool:
        return self.scheduler.has_work() or self._pending is not None

    # ---- the step --------------------------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        """Run one batch: schedule -> launch forward + sampling -> stream the deltas and finishes of the tokens
        read back. With overlap_scheduling the tokens of step N are read back (detokenized, stop rules) while step
        N+1 runs on the device, so the outputs of a call are the previous launch's."""
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return self._resolve()
        self._stamp_scheduled(sched)
        launched = self._launch(sched)
        outputs = self._resolve()
        self.scheduler.on_step_done(sched)
        self._pending = self._place(launched)
        if not self.cfg.overlap_scheduling:
            outputs += self._resolve()
        return outputs

    def _stamp_scheduled(self, sched: SchedulerOutput) -> None:
        now = time.monotonic()
        for seq in sched.admitted:
            seq.times.first_scheduled = now

    def _launch(self, sched: SchedulerOutput) -> _Launch:
        """Forward the step and sample its rows on the device; nothing waits for the GPU here."""
        prev = None
        if self._pending is not None:
            p = self._pending
            prev = PrevTokens(p.sample.device_tokens, {id(t.seq): i for i, t in enumerate(p.rows) if t is not None})
        logits = self.runner.run(sched.chunks, prev)
        tracked = [self.requests[c.seq.request_id] for c in sched.chunks if c.samples]
        rows = [self._sample_row(t, prev) for t in tracked]
        return _Launch(tracked, sample_async(logits, rows) if rows else None)

    def _place(self, launch: _Launch) -> _Launch | None:
        """Give each sampled row's sequence its PENDING token (rows of requests that ended meanwhile are dropped)."""
        if launch.sample is None:
            return None
        for i, t in enumerate(launch.rows):
            if not self._live(t):
                launch.rows[i] = None
            else:
                t.seq.output_ids.append(PENDING)
        return launch

    def _resolve(self) -> list[EngineOutput]:
        """Read back the pending step's tokens and emit them (the only place that waits for the device)."""
        launch, self._pending = self._pending, None
        if launch is None:
            return []
        result = launch.sample.result()
        self.runner.settle_vision_times()  # encodes launched up to this step are done: their times are final
        outputs: list[EngineOutput] = []
        now = time.monotonic()
        for i, t in enumerate(launch.rows):
            if t is not None and self._live(t):
                outputs += self._emit(t, result.token_ids[i], result.logprobs[i], now)
        return outputs

    def _live(self, t: _Tracked) -> bool:
        """Still in flight: not finished or aborted since its row was launched (its id may even be reused)."""
        return self.requests.get(t.seq.request_id) is t

    def _sample_row(self, t: _Tracked, prev: PrevTokens | None) -> SampleRow:
        seq, p = t.seq, t.seq.sampling
        seen = on_device = None
        if p.repetition_penalty != 1.0:
            seen = seq.prompt_ids + seq.output_ids[:t.out.num_output]
            if len(seq.output_ids) > t.out.num_output:  # its newest token is still on the device
                row = prev.rows[id(seq)]
                on_device = prev.tokens[row:row + 1]
        return SampleRow(p, seq.num_tokens, seen, t.out.banned_ids(len(seq.output_ids)), t.generator, on_device)

    def _emit(self, t: _Tracked, token: int, logprob, now: float) -> list[EngineOutput]:
        seq = t.seq
        seq.output_ids[t.out.num_output] = token  # the oldest PENDING one
        if not seq.times.first_token:
            seq.times.first_token = now
        step = t.out.append(token)
        delta = TokenDelta(seq.request_id, (token,), step.text, (logprob,) if logprob is not None else ())
        if step.finish is None:
            return [delta]
        del self.requests[seq.request_id]
        self.scheduler.finish(seq)
        return [delta, self._finished(t, step.finish, step.matched_stop)]

    def _finished(self, t: _Tracked, reason: FinishReason, matched_stop: str) -> Finished:
        seq, tm = t.seq, t.seq.times
        del seq.output_ids[t.out.num_output:]  # a token sampled after the end (or before an abort) never counts
        now = time.monotonic()

        def ms(a: float, b: float) -> float:
            return max(b - a, 0.0) * 1000.0 if a and b else 0.0

        usage = Usage(seq.num_prompt_tokens, len(seq.output_ids), seq.num_cached_tokens,
                      seq.processed.num_image_tokens if seq.processed else 0)
        preprocess_ms = seq.processed.preprocess_ms if seq.processed else 0.0
        # arrival is when the server got the request, before preprocessing: queue time is the wait for the
        # scheduler alone, so a large image shows up in preprocess_ms rather than looking like overload
        timings = Timings(queue_ms=max(ms(tm.arrival, tm.first_scheduled) - preprocess_ms, 0.0),
                          preprocess_ms=preprocess_ms,
                          vision_ms=tm.vision_ms, prefill_ms=ms(tm.first_scheduled, tm.first_token),
                          ttft_ms=ms(tm.arrival, tm.first_token), e2e_ms=ms(tm.arrival, now))
        return Finished(seq.request_id, reason, matched_stop, usage, timings)
