"""LLMEngine: the synchronous core. add / abort / step, where step = schedule -> run -> sample -> postprocess."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vlm_service.config import EngineConfig
from vlm_service.engine.detokenizer import OutputState
from vlm_service.engine.isolation import Failed, PendingGroups, client_error, run_isolated
from vlm_service.engine.kv_cache import BlockManager
from vlm_service.engine.model_runner import ModelRunner, PrevTokens, model_dtype, pool_num_blocks
from vlm_service.engine.prefill_policy import PrefillPolicy
from vlm_service.engine.sampler import PendingSample, SampleRow, sample_async
from vlm_service.engine.scheduler import Scheduler, SchedulerOutput
from vlm_service.engine.sequence import PENDING, Sequence, SeqStatus, visual_spans
from vlm_service.engine.step_log import StepLog
from vlm_service.engine.validate import validate_sampling
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
    sample: PendingSample | PendingGroups | None
    step: int = 0  # the engine's step number (the step log)


class LLMEngine:
    """Continuous-batching generation over a paged KV pool (see scheduler.py, model_runner.py)."""

    def __init__(self, model: VLModel, tokenizer, cfg: EngineConfig, device: torch.device | str = "cpu",
                 make_runner=None):
        """make_runner(model, cfg, device, num_blocks): another ModelRunner (engine/parallel/ passes its rank-0
        runner); default ModelRunner."""
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.device = torch.device(device)
        spec = model.spec
        num_blocks = pool_num_blocks(cfg, spec, model_dtype(model), self.device)
        # a request alone must always fit in the pool, or preemption could never make room for it
        self.max_model_len = min(cfg.max_model_len or spec.max_position_embeddings, num_blocks * cfg.block_size)
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_cache)
        policy = PrefillPolicy(cfg.short_prefill_tokens, cfg.mixed_long_prefill_tokens, cfg.max_prefill_hold_steps)
        self.scheduler = Scheduler(self.block_manager, cfg.max_num_seqs, cfg.max_batched_tokens, policy)
        self.step_log = StepLog(cfg.step_log)
        self.step_no = 0  # steps launched
        # set after launching a step with long prefill work (beyond a mixed step's share): the next step() call
        # only reads it back, so requests that arrive meanwhile are in the step after it, not behind another one
        # launched ahead (overlap); a CUDA event (the step may sample nothing), True on the CPU
        self._barrier = None
        self.runner = (make_runner or ModelRunner)(model, cfg, self.device, num_blocks)
        self.eos_ids = tuple(spec.eos_token_ids)
        self.requests: dict[str, _Tracked] = {}
        self._pending: _Launch | None = None  # the launched step whose tokens are not read back yet
        self._failed: list[Failed] = []  # requests dropped since the last step() returned

    # ---- requests --------------------------------------------------------------------------------------------
    def check(self, processed: ProcessedInput, sampling: SamplingParams) -> int:
        """Validate a request; returns its completion limit (max_tokens capped by the context)."""
        validate_sampling(sampling, self.model.spec.vocab_size, client=False)
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
        spans = visual_spans(processed)
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

    def pause(self, request_id: str) -> bool:
        """Stop scheduling a request (its reader is behind): its KV blocks are freed, recomputed on resume (the
        prefix cache keeps most of them). False when it is not in flight."""
        tracked = self.requests.get(request_id)
        if tracked is not None:
            self.scheduler.pause(tracked.seq)
        return tracked is not None

    def resume(self, request_id: str) -> None:
        """Schedule a paused request again (next to be admitted); a no-op for any other id."""
        tracked = self.requests.get(request_id)
        if tracked is not None:
            self.scheduler.resume(tracked.seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or self._pending is not None

    # ---- the step --------------------------------------------------------------------------------------------
    def step(self) -> list[EngineOutput | Failed]:
        """Run one batch: schedule -> launch forward + sampling -> stream the deltas and finishes of the tokens
        read back. With overlap_scheduling the tokens of step N are read back (detokenized, stop rules) while step
        N+1 runs on the device, so the outputs of a call are the previous launch's. A request whose values make
        the step raise is dropped alone (a Failed output, see isolation.py); the others go on as if it never was.
        After a step with long prefill work the next call only reads it back (see _barrier)."""
        if self._barrier is not None:
            return self._after_long_step()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            outputs = self._resolve()
            return self._take_failed() + outputs
        self.step_no += 1
        self._stamp_scheduled(sched)
        self.step_log.begin(self.step_no, sched)
        launched = self._launch(sched)
        launched.step = self.step_no
        self.step_log.launched()
        outputs = self._resolve()
        self.scheduler.on_step_done(sched)
        self._pending = self._place(launched)
        if not self.cfg.overlap_scheduling:
            outputs += self._resolve()
        if sched.long_tokens > (self.cfg.mixed_long_prefill_tokens if sched.mixed else 0):
            self._barrier = self._mark_launched()
        self.step_log.end()
        return self._take_failed() + outputs

    def _mark_launched(self):
        if self.device.type != "cuda":
            return True  # the CPU ran the step already
        event = torch.cuda.Event()
        event.record()
        return event

    def _after_long_step(self) -> list[EngineOutput | Failed]:
        outputs = self._resolve()
        if self._barrier is not True:
            self._barrier.synchronize()
        self._barrier = None
        return self._take_failed() + outputs

    def _stamp_scheduled(self, sched: SchedulerOutput) -> None:
        now = time.monotonic()
        for seq in sched.admitted:
            seq.times.first_scheduled = now
            seq.first_step = self.step_no

    def _launch(self, sched: SchedulerOutput) -> _Launch:
        """Forward the step and sample its rows on the device; nothing waits for the GPU here."""
        prev = None
        if self._pending is not None:
            p = self._pending
            prev = PrevTokens(p.sample.device_tokens, {id(t.seq): i for i, t in enumerate(p.rows) if t is not None})
        chunks, logits = self._forward(sched.chunks, prev)
        tracked = [self.requests[c.seq.request_id] for c in chunks if c.samples]
        if not tracked:
            return _Launch([], None)
        return self._sample(logits, tracked, [self._sample_row(t, prev) for t in tracked])

    def _forward(self, chunks: list, prev: PrevTokens | None) -> tuple[list, torch.Tensor | None]:
        """The chunks whose forward ran (a chunk that fails even alone fails its request) and their logits
        [n sampling chunks, V], in order."""
        ran, bad = run_isolated(chunks, lambda group: self.runner.run(list(group), prev))
        for chunk, exc in bad:
            self._fail(self.requests[chunk.seq.request_id], exc)
        parts = [logits for _, logits in ran]
        logits = (parts[0] if len(parts) == 1 else torch.cat(parts)) if parts else None
        return [c for group, _ in ran for c in group], logits

    def _sample(self, logits: torch.Tensor, tracked: list[_Tracked], rows: list[SampleRow]) -> _Launch:
        """Sample every row; a row whose sampling fails even alone fails its request."""
        def trial(idx):
            if len(idx) == len(rows):
                return sample_async(logits, rows)
            return sample_async(logits[list(idx)], [rows[i] for i in idx])

        ran, bad = run_isolated(range(len(rows)), trial)
        for i, exc in bad:
            self._fail(tracked[i], exc)
        parts = [pending for _, pending in ran]
        if not parts:
            return _Launch([], None)
        return _Launch([tracked[i] for group, _ in ran for i in group],
                       parts[0] if len(parts) == 1 else PendingGroups(parts))

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
        """Read back the pending step's tokens and emit them (the only place that waits for the device). A row
        whose token cannot be emitted (detokenizer, stop rules) fails its request alone; a read-back that fails
        (a device error, e.g. an asynchronous CUDA fault) fails the rows of that launch."""
        launch, self._pending = self._pending, None
        if launch is None:
            return []
        try:
            result = launch.sample.result()
        except Exception as exc:  # noqa: BLE001
            self._fail_rows(launch.rows, exc)
            return []
        self.runner.settle_vision_times()  # encodes launched up to this step are done: their times are final
        outputs: list[EngineOutput] = []
        now = time.monotonic()
        for i, t in enumerate(launch.rows):
            if t is not None and self._live(t):
                try:
                    outputs += self._emit(t, result.token_ids[i], result.logprobs[i], now, launch.step)
                except Exception as exc:  # noqa: BLE001
                    self._fail(t, exc)
        return outputs

    def _fail_rows(self, rows: list[_Tracked | None], exc: Exception) -> None:
        for t in rows:
            if t is not None and self._live(t):
                self._fail(t, exc)

    def _fail(self, t: _Tracked, exc: Exception) -> None:
        """Drop one request (blocks freed at once); its client gets client_error(exc), the log the detail."""
        rid = t.seq.request_id
        if self.requests.get(rid) is t:
            del self.requests[rid]
        if t.seq.status != SeqStatus.FINISHED:
            self.scheduler.finish(t.seq)
        self._failed.append(Failed(rid, client_error(exc, rid)))

    def _take_failed(self) -> list[Failed]:
        failed, self._failed = self._failed, []
        return failed

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

    def _emit(self, t: _Tracked, token: int, logprob, now: float, step: int = 0) -> list[EngineOutput]:
        seq = t.seq
        seq.output_ids[t.out.num_output] = token  # the oldest PENDING one
        if not seq.times.first_token:
            seq.times.first_token = now
            self.step_log.first_token(seq.request_id, seq.first_step, step)
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
                      seq.processed.num_visual_tokens if seq.processed else 0)
        preprocess_ms = seq.processed.preprocess_ms if seq.processed else 0.0
        # arrival is when the server got the request, before preprocessing: queue time is the wait for the
        # scheduler alone, so a large image shows up in preprocess_ms rather than looking like overload
        timings = Timings(queue_ms=max(ms(tm.arrival, tm.first_scheduled) - preprocess_ms, 0.0),
                          preprocess_ms=preprocess_ms,
                          vision_ms=tm.vision_ms, prefill_ms=ms(tm.first_scheduled, tm.first_token),
                          ttft_ms=ms(tm.arrival, tm.first_token), e2e_ms=ms(tm.arrival, now),
                          decode_ms=seq.processed.decode_ms if seq.processed else 0.0)
        return Finished(seq.request_id, reason, matched_stop, usage, timings)
