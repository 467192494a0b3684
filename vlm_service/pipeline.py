"""The request lifecycle, transport-neutral (DESIGN.md): the gRPC servicer and the HTTP app are thin adapters over it.

generate(), in order: drain check -> convert (the adapter's `build`, no decode) -> image count -> sampling validation
-> engine.reserve (admission and duplicate ids, before any image work) -> preprocess in a thread pool -> engine
outputs until the one Finished. Closing the iterator early (client gone, cancelled) aborts the engine request; a
server-side deadline raises errors.DeadlineExceeded. Everything a user can cause is a typed errors.ServiceError;
the adapters map them to their status codes. One request-log line and one metrics observation per call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable

from vlm_service import errors, types
from vlm_service.client_text import check_request_id
from vlm_service.config import LimitsConfig
from vlm_service.engine.validate import validate_sampling
from vlm_service.ownership import ANONYMOUS, Identity, Ownership
from vlm_service.request_log import RequestObserver

log = logging.getLogger(__name__)

# image decode and resize release the GIL (PIL, numpy): one thread per core, up to 8, so concurrent image requests
# are preprocessed side by side on a many-core GPU host rather than two at a time
PREPROCESS_THREADS = min(8, os.cpu_count() or 2)

BuildRequest = Callable[[str, float], types.Request]  # (request_id, arrival) -> a converted Request (no decode)


def status_of(exc: BaseException | None) -> str:
    """The status name a call ended with: OK, CANCELLED (the client left), a ServiceError's code, or INTERNAL."""
    if exc is None:
        return "OK"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    return exc.code if isinstance(exc, errors.ServiceError) else "INTERNAL"


class Pipeline:
    """Serves a runtime (engine + processor + model info) to any transport; see the module docstring."""

    def __init__(self, limits: LimitsConfig, runtime=None, preprocess_threads: int = PREPROCESS_THREADS,
                 metrics=None):
        self._rt = runtime  # None while the model loads: calls get ShuttingDown (UNAVAILABLE / 503)
        self.metrics = metrics  # vlm_service.metrics.Metrics or None
        self._limits = limits
        self._pool = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.owners = Ownership(limits.operator_identity)  # who may abort what (cert subject or API-key name)
        self.draining = False

    # --- the calls ----------------------------------------------------------------------------------------------

    async def generate(self, request_id: str, build: BuildRequest, n_images: int, *, peer: str = "",
                       identity: Identity = ANONYMOUS, remaining_s: float | None = None
                       ) -> AsyncIterator[types.EngineOutput]:
        """Stream one request's TokenDeltas and its one Finished. `build` converts the transport's message (raising
        errors.InvalidInput); `remaining_s` is the client's own deadline, if it set one (the transport enforces it)."""
        request_id = request_id or uuid.uuid4().hex
        identity = identity or ANONYMOUS
        arrival = time.monotonic()
        deadline = self.deadline(remaining_s)
        obs = RequestObserver(request_id, peer, n_images, self.metrics, client_deadline_s=remaining_s,
                              identity=identity.name)
        error, claimed, finished = None, False, False
        try:
            check_request_id(request_id)
            key = self.owners.claim(identity, request_id)  # the engine's id: namespaced per identity
            claimed = True
            req = self._admit(build(key, arrival), n_images)
            async for out in self._stream(req, deadline, obs):
                finished = isinstance(out, types.Finished)
                yield out
        except errors.ServiceError as exc:
            error = exc
            raise
        except Exception as exc:  # no check foresaw it: the client gets a generic INTERNAL, the log the traceback
            log.error("request %s failed unexpectedly", request_id[:64], exc_info=exc)
            error = errors.InternalError(errors.INTERNAL_MESSAGE)
            raise error from None
        except BaseException as exc:
            error = None if finished and isinstance(exc, GeneratorExit) else exc  # closed after its Finished: OK
            raise
        finally:
            if claimed:
                self.owners.release(identity, request_id)
            obs.done(status_of(error))

    def model_info(self):
        """runtime.ModelInfo of the served model (ShuttingDown while it loads)."""
        if self._rt is None:
            raise errors.ShuttingDown("the model is still loading")
        return self._rt.model_info()

    def abort(self, request_id: str, identity: Identity = ANONYMOUS) -> bool:
        """Abort an in-flight request of this identity; False when there is none (another identity's request is
        reported as not found, so its existence does not leak)."""
        if not check_request_id(request_id):
            raise errors.InvalidInput("request_id: must not be empty", field="request_id")
        if self._rt is None:
            return False
        keys = self.owners.abortable(identity or ANONYMOUS, request_id)  # its own; an operator's: everyone's
        return any([bool(self._rt.engine.abort(k)) for k in keys])

    @property
    def ready(self) -> bool:
        """Loaded and not draining: new requests are taken."""
        return self._rt is not None and not self.draining

    # --- drain ----------------------------------------------------------------------------------------------------

    def attach(self, runtime) -> None:
        """Serve `runtime` from now on (the server starts answering health before the model is loaded)."""
        self._rt = runtime

    def start_drain(self) -> None:
        """From now on new requests get ShuttingDown; in-flight streams go on."""
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no stream is in flight (True) or the timeout passes (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @property
    def inflight(self) -> int:
        return self._inflight

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- steps of generate ----------------------------------------------------------------------------------------

    def _admit(self, req: types.Request, n_images: int) -> types.Request:
        """Checks that need no image decode; ends with the engine reservation (released on any later failure)."""
        if self.draining:
            raise errors.ShuttingDown("the server is draining; retry on another replica")
        if self._rt is None:
            raise errors.ShuttingDown("the model is still loading; retry shortly")
        self._check_images(n_images)
        # the one check of sampling values for every transport (the engine's own guard repeats it for direct use)
        validate_sampling(req.sampling, getattr(self._rt.engine, "vocab_size", None))
        self._rt.engine.reserve(req.request_id)
        return req

    def _check_images(self, n_images: int) -> None:
        cap = self._limits.max_images_per_request
        if n_images > cap:
            raise errors.InvalidInput(f"messages: {n_images} images, at most {cap} per request", field="messages")

    async def _stream(self, req: types.Request, deadline: float | None, obs: RequestObserver):
        """An admitted request, counted in flight: preprocess, then the engine outputs."""
        self._enter()
        try:
            processed = await self._preprocess(req)
            obs.processed(processed, req)
            async for out in self._outputs(req, processed, deadline):
                obs.output(out)
                yield out
        finally:
            self._leave()

    async def _preprocess(self, req: types.Request) -> types.ProcessedInput:
        """Image decode + chat template off the event loop; the reservation is released if this fails."""
        try:  # process_async: the cost checks, then a wait for the images' share of the decode budget
            return await self._rt.processor.process_async(req.messages, self._pool)
        except BaseException:
            self._rt.engine.release(req.request_id)
            raise

    async def _outputs(self, req: types.Request, processed, deadline: float | None):
        """Engine outputs until Finished; a server-side deadline raises DeadlineExceeded; leaving early aborts."""
        gen = self._rt.engine.generate(req.request_id, processed, req.sampling, req.arrival_time)
        finished = False
        try:
            while not finished:
                out = await self._next(gen, deadline)
                finished = isinstance(out, types.Finished)
                yield out
        except asyncio.TimeoutError:
            raise errors.DeadlineExceeded("the request deadline passed") from None
        except StopAsyncIteration:
            raise errors.InternalError("the engine ended the stream without a Complete") from None
        finally:
            if not finished:
                self._rt.engine.abort(req.request_id)
            await gen.aclose()

    @staticmethod
    async def _next(gen, deadline: float | None):
        if deadline is None:
            return await gen.__anext__()
        return await asyncio.wait_for(gen.__anext__(), max(0.0, deadline - time.monotonic()))

    def deadline(self, remaining_s: float | None) -> float | None:
        """Server-side deadline (monotonic) from the limits; None when the client's own deadline is the tighter one
        (the transport enforces that)."""
        limit = self._limits.max_deadline_s or None
        if remaining_s is None and self._limits.default_deadline_s > 0:
            limit = min(limit or float("inf"), self._limits.default_deadline_s)
        if limit is None or (remaining_s is not None and remaining_s <= limit):
            return None
        return time.monotonic() + limit

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
