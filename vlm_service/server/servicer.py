"""The grpc.aio servicer of vlm.v1.VisionLanguageService.

Generate, in order: drain check -> convert/validate (no decode) -> image count -> engine.reserve (admission and
duplicate ids, before any image work) -> preprocess in a thread pool -> stream engine outputs -> exactly one Complete.
Leaving the stream early (cancel, disconnect, deadline) aborts the engine request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc

from vlm_service import errors, types
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.config import LimitsConfig
from vlm_service.server import convert
from vlm_service.server.metrics import RequestObserver, status_name

log = logging.getLogger(__name__)

# image decode and resize release the GIL (PIL, numpy): one thread per core, up to 8, so concurrent image requests
# are preprocessed side by side on a many-core GPU host rather than two at a time
PREPROCESS_THREADS = min(8, os.cpu_count() or 2)


class VisionLanguageServicer(vlm_pb2_grpc.VisionLanguageServiceServicer):
    """Serves a runtime (engine + processor + model info); see the module docstring for the Generate pipeline."""

    def __init__(self, limits: LimitsConfig, runtime=None, preprocess_threads: int = PREPROCESS_THREADS, metrics=None):
        self._rt = runtime  # None while the model loads: calls get UNAVAILABLE
        self.metrics = metrics  # vlm_service.metrics.Metrics or None
        self._limits = limits
        self._pool = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    # --- RPCs -------------------------------------------------------------------------------------------------

    async def Generate(self, request: vlm_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        request_id = request.request_id or uuid.uuid4().hex
        arrival = time.monotonic()
        deadline = self._deadline(context)
        obs = RequestObserver(request_id, context.peer(), convert.count_images(request), self.metrics,
                              client_deadline_s=context.time_remaining())
        error = None
        try:
            req = await self._admit(request, request_id, arrival, context)
            async for out in self._stream(req, deadline, context, obs):
                yield convert.output_to_proto(out)
        except BaseException as exc:
            error = exc
            raise
        finally:
            obs.done(status_name(error, context))

    async def GetModelInfo(self, request, context):
        if self._rt is None:
            await self._fail(context, errors.ShuttingDown("the model is still loading"))
        return convert.model_info_to_proto(self._rt.model_info())

    async def Abort(self, request: vlm_pb2.AbortRequest, context):
        if self._rt is None:
            return vlm_pb2.AbortResponse(found=False)
        if not request.request_id:
            await self._fail(context, errors.InvalidInput("request_id: must not be empty", field="request_id"))
        return vlm_pb2.AbortResponse(found=bool(self._rt.engine.abort(request.request_id)))

    # --- drain --------------------------------------------------------------------------------------------------

    def attach(self, runtime) -> None:
        """Serve `runtime` from now on (the server starts answering health before the model is loaded)."""
        self._rt = runtime

    def start_drain(self) -> None:
        """From now on new Generate calls get UNAVAILABLE; in-flight streams go on."""
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

    # --- steps of Generate ----------------------------------------------------------------------------------------

    async def _stream(self, req: types.Request, deadline: float | None, context, obs: RequestObserver):
        """An admitted request, counted in flight: preprocess, then the engine outputs."""
        self._enter()
        try:
            processed = await self._preprocess(req, context)
            obs.processed(processed, req)
            async for out in self._outputs(req, processed, deadline, context):
                obs.output(out)
                yield out
        finally:
            self._leave()

    async def _admit(self, request, request_id: str, arrival: float, context) -> types.Request:
        """Checks that need no image decode; ends with the engine reservation (released on any later failure)."""
        try:
            if self.draining:
                raise errors.ShuttingDown("the server is draining; retry on another replica")
            if self._rt is None:
                raise errors.ShuttingDown("the model is still loading; retry shortly")
            req = convert.request_from_proto(request, request_id, arrival)
            n_images = convert.count_images(request)
            if n_images > self._limits.max_images_per_request:
                raise errors.InvalidInput(f"messages: {n_images} images, at most "
                                          f"{self._limits.max_images_per_request} per request", field="messages")
            self._rt.engine.reserve(request_id)
            return req
        except errors.ServiceError as exc:
            await self._fail(context, exc)

    async def _preprocess(self, req: types.Request, context) -> types.ProcessedInput:
        """Image decode + chat template off the event loop; the reservation is released if this fails."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._rt.processor.process, req.messages)
        except errors.ServiceError as exc:
            self._rt.engine.release(req.request_id)
            await self._fail(context, exc)
        except BaseException:
            self._rt.engine.release(req.request_id)
            raise

    async def _outputs(self, req: types.Request, processed, deadline: float | None, context):
        """Engine outputs until Finished; a server-side deadline gives DEADLINE_EXCEEDED; leaving early aborts."""
        gen = self._rt.engine.generate(req.request_id, processed, req.sampling, req.arrival_time)
        finished = False
        try:
            while not finished:
                out = await self._next(gen, deadline)
                finished = isinstance(out, types.Finished)
                yield out
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the request deadline passed")
        except errors.ServiceError as exc:  # e.g. the prompt is over the context, found by the engine
            await self._fail(context, exc)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INTERNAL, "the engine ended the stream without a Complete")
        finally:
            if not finished:
                self._rt.engine.abort(req.request_id)
            await gen.aclose()

    @staticmethod
    async def _next(gen, deadline: float | None):
        if deadline is None:
            return await gen.__anext__()
        return await asyncio.wait_for(gen.__anext__(), max(0.0, deadline - time.monotonic()))

    def _deadline(self, context) -> float | None:
        """Server-side deadline (monotonic) from the limits; the client's own deadline is enforced by grpc."""
        remaining = context.time_remaining()
        limit = self._limits.max_deadline_s or None
        if remaining is None and self._limits.default_deadline_s > 0:
            limit = min(limit or float("inf"), self._limits.default_deadline_s)
        if limit is None or (remaining is not None and remaining <= limit):
            return None
        return time.monotonic() + limit

    async def _fail(self, context, exc: errors.ServiceError):
        status = convert.error_status(exc)
        if exc.field and not str(exc).startswith(exc.field):  # the plain message names the field too (grpcurl users)
            status.message = f"{exc.field}: {exc}"
        log.debug("request refused: %s (%s)", exc, convert.status_code(exc).name)  # the request line says it too
        await context.abort(convert.status_code(exc), status.message,
                            trailing_metadata=convert.status_metadata(status))

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
