"""AsyncEngine: LLMEngine on a background thread, with admission control and asyncio streams.

Threads: the asyncio side (server) only touches `_reserved`, `_cancelled`, `_streams` and the command queue; the
engine thread owns the LLMEngine, applies queued commands (add/abort/resume) between steps, and hands outputs back
with loop.call_soon_threadsafe. Commands run in the order they were queued, so an abort followed by a re-add of the
same id is safe. Backpressure (a reader that stops reading pauses its request) is described in streams.py.

Errors: a request the engine drops (its values broke a step, see isolation.py) ends its stream with the
ServiceError it was given; nothing else that raises on the engine thread reaches a client as its own text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import AsyncIterator

from vlm_service.config import EngineConfig, LimitsConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.engine.isolation import GENERIC_MESSAGE, Failed, client_error
from vlm_service.engine.stats import EngineStats, snapshot
from vlm_service.engine.streams import OutputStream, aborted_before_start, deliver
from vlm_service.errors import DuplicateRequest, InternalError, InvalidInput, Overloaded, ServiceError, ShuttingDown
from vlm_service.types import Finished, ProcessedInput, SamplingParams, TokenDelta

log = logging.getLogger(__name__)


class AsyncEngine:
    """The engine API the server codes against (see DESIGN.md, Engine)."""

    def __init__(self, model, tokenizer, engine_cfg: EngineConfig, limits: LimitsConfig, device, make_runner=None):
        self.engine = LLMEngine(model, tokenizer, engine_cfg, device, make_runner)
        self.limits = limits
        self._reserved: set[str] = set()
        self._cancelled: set[str] = set()  # reservations aborted before generate(): their stream ends with ABORT
        self._streams: dict[str, OutputStream] = {}
        self._commands: deque = deque()
        self._queued_tokens: dict[str, int] = {}  # adds queued, not yet in the engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._shutting_down = False
        self._exit = False
        self._snapshot = EngineStats(kv_blocks_total=self.engine.block_manager.num_blocks)
        self._engine_ids: frozenset[str] = frozenset()
        self._owner: dict[str, OutputStream] = {}  # engine thread only: which stream gets a request's outputs
        self._paused: dict[str, OutputStream] = {}  # engine thread only: requests paused for their reader
        self._waiting_tokens = 0

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vlm-engine", daemon=True)
            self._thread.start()

    async def stop(self, drain: bool) -> None:
        """Refuse new work; with drain, wait for in-flight requests to finish, else abort them; stop the thread."""
        self._shutting_down = True
        if not drain:
            for rid in list(self._streams):
                self.abort(rid)
        while self._streams or self._reserved:
            await asyncio.sleep(0.01)
        self._exit = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size (bounds stop_token_ids in validate_sampling)."""
        return self.engine.model.spec.vocab_size

    # ---- admission -------------------------------------------------------------------------------------------
    def reserve(self, request_id: str) -> None:
        """Admit a request id before any image decode (a reservation counts as waiting)."""
        if self._shutting_down:
            raise ShuttingDown("the engine is shutting down")
        if request_id in self._reserved or request_id in self._streams or request_id in self._cancelled:
            raise DuplicateRequest(f"request {request_id!r} is already in flight", field="request_id")
        waiting = len(self._reserved) + len(self._queued_tokens) + self._snapshot.waiting
        if waiting >= self.limits.max_waiting_requests:
            raise Overloaded(f"{waiting} requests are waiting (limit {self.limits.max_waiting_requests})")
        tokens = self._waiting_tokens + sum(self._queued_tokens.values())
        if self.limits.max_waiting_tokens and tokens >= self.limits.max_waiting_tokens:
            raise Overloaded(f"{tokens} prompt tokens are waiting (limit {self.limits.max_waiting_tokens})")
        self._reserved.add(request_id)

    def release(self, request_id: str) -> None:
        """Undo a reservation (preprocessing failed)."""
        self._reserved.discard(request_id)
        self._cancelled.discard(request_id)

    def _check(self, processed: ProcessedInput, sampling: SamplingParams) -> None:
        cap = self.limits.max_prompt_tokens
        if cap and len(processed.input_ids) > cap:
            raise InvalidInput(f"prompt has {len(processed.input_ids)} tokens, over the limit of {cap}",
                               field="messages")
        self.engine.check(processed, sampling)

    def with_defaults(self, sampling: SamplingParams) -> SamplingParams:
        """The server's default max_tokens (limits.default_max_tokens; 0 = up to the context) where the request
        set none; never below its min_tokens."""
        default = self.limits.default_max_tokens
        if sampling.max_tokens is not None or not default:
            return sampling
        return replace(sampling, max_tokens=max(default, sampling.min_tokens))

    # ---- streams ---------------------------------------------------------------------------------------------
    async def generate(self, request_id: str, processed: ProcessedInput, sampling: SamplingParams,
                       arrival_time: float) -> AsyncIterator[TokenDelta | Finished]:
        """Stream a request's TokenDeltas and its one Finished. Leaving early aborts it at once."""
        if request_id in self._cancelled:  # aborted while it was preprocessed: Abort answered found=true
            self._cancelled.discard(request_id)
            yield aborted_before_start(request_id, processed)
            return
        if request_id not in self._reserved:
            self.reserve(request_id)
        sampling = self.with_defaults(sampling)
        try:
            self._check(processed, sampling)
        except InvalidInput:
            self.release(request_id)
            raise
        stream = OutputStream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        self._reserved.discard(request_id)
        self._submit(("add", request_id, processed, sampling, arrival_time, stream), len(processed.input_ids))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Finished):
                    finished = True
                    item = self._end(request_id, stream, item)
                elif stream.took_one(self.limits.max_buffered_outputs):
                    self._submit(("resume", request_id))
                yield item
        finally:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
            if not finished:
                self._submit(("abort", request_id))

    def _end(self, request_id: str, stream: OutputStream, fin: Finished) -> Finished:
        """The stream is over before its Finished is handed out, so an Abort from now on answers found=false
        (and one that answered found=true before makes it an ABORT)."""
        if self._streams.get(request_id) is stream:
            del self._streams[request_id]
        return stream.final(fin)

    def abort(self, request_id: str) -> bool:
        """Abort a reserved or streaming request; True means its stream ends with Finished(ABORT) (call it on the
        event loop of the streams, as the server does)."""
        if request_id in self._reserved:
            self._reserved.discard(request_id)
            self._cancelled.add(request_id)
            return True
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.aborted = True
            self._submit(("abort", request_id))
            return True
        return False

    def stats(self) -> EngineStats:
        s = self._snapshot
        ids = set(self._reserved) | self._cancelled | set(self._streams) | set(self._queued_tokens) | self._engine_ids
        return EngineStats(s.running, s.waiting, len(self._reserved), s.kv_blocks_used, s.kv_blocks_total, len(ids),
                           s.prefix_cache_hit_tokens, s.vision_cache_hits, s.vision_cache_misses, s.paused)

    def _submit(self, command: tuple, tokens: int = 0) -> None:
        with self._lock:
            if command[0] == "add":
                self._queued_tokens[command[1]] = tokens
            self._commands.append(command)
        self._wake.set()

    # ---- the engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._exit:
            self._wake.clear()
            self._publish(self._apply_commands() + self._abort_stalled())
            if not self.engine.has_work():
                self._take_snapshot()
                self._wake.wait(timeout=0.5)
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # the engine isolates failing requests itself; this is the last resort
                log.exception("engine step failed outside request isolation; failing every request in flight")
                self._fail_all(exc)
                continue
            self._take_snapshot()
            self._publish(outputs)

    def _apply_commands(self) -> list:
        outputs, added = [], []
        while True:
            with self._lock:
                if not self._commands:
                    break
                command = self._commands.popleft()
            if command[0] == "add":
                added.append(command[1])
            outputs += self._apply(command)
        if added:
            # Counted as queued until the snapshot shows them waiting: admission (reserve) never sees a gap in
            # which an added request is in neither count (it may count one twice for a moment: the safe side).
            self._take_snapshot()
            with self._lock:
                for rid in added:
                    self._queued_tokens.pop(rid, None)
        return outputs

    def _apply(self, command: tuple) -> list:
        if command[0] == "abort":
            fin = self.engine.abort(command[1])
            return [fin] if fin is not None else []
        if command[0] == "resume":
            self._resume(command[1])
            return []
        _, rid, processed, sampling, arrival, stream = command
        self._owner[rid] = stream
        try:
            self.engine.add(rid, processed, sampling, arrival)
        except Exception as exc:
            return [Failed(rid, client_error(exc, rid))]
        return []

    def _resume(self, rid: str) -> None:
        stream = self._paused.pop(rid, None)
        if stream is not None:
            self.engine.resume(rid)
            stream.resumed()

    def _pause_behind(self, stream: OutputStream, rid: str) -> None:
        """Called for each TokenDelta counted: pause the request when its reader is too far behind."""
        if stream.should_pause(self.limits.max_buffered_outputs) and self.engine.pause(rid):
            stream.paused_at = time.monotonic()
            stream.paused = True
            self._paused[rid] = stream

    def _abort_stalled(self) -> list:
        """Abort requests paused longer than stalled_stream_timeout_s (0 = wait for the reader forever)."""
        limit = self.limits.stalled_stream_timeout_s
        if not self._paused or limit <= 0:
            return []
        now = time.monotonic()
        stalled = [rid for rid, st in self._paused.items() if now - st.paused_at > limit]
        for rid in stalled:
            log.info("request %s aborted: its reader took nothing for %.0f s", rid, limit)
        return [fin for fin in map(self.engine.abort, stalled) if fin is not None]

    def _fail_all(self, exc: Exception) -> None:
        error = exc if isinstance(exc, ServiceError) else InternalError(GENERIC_MESSAGE)  # (logged by the caller)
        failures = [Failed(rid, error) for rid in list(self.engine.requests)]
        for rid in list(self.engine.requests):
            self.engine.abort(rid)
        self._take_snapshot()
        self._publish(failures)

    def _take_snapshot(self) -> None:
        self._waiting_tokens = self.engine.scheduler.num_waiting_tokens
        self._engine_ids = frozenset(self.engine.requests)
        self._snapshot = snapshot(self.engine)

    def _publish(self, outputs: list) -> None:
        """Hand outputs to their streams' loops; pause decisions are made before the hand-over (streams.py)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            final = isinstance(out, (Finished, Failed))
            stream = self._owner.pop(out.request_id, None) if final else self._owner.get(out.request_id)
            if final:
                self._paused.pop(out.request_id, None)
            if stream is None:
                continue
            if not final:
                stream.delivered += 1
                self._pause_behind(stream, out.request_id)
            by_loop.setdefault(stream.loop, []).append((stream, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # the loop closed under us: nobody listens any more
                pass
