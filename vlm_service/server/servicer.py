"""The grpc.aio servicer of vlm.v1.VisionLanguageService: a thin adapter over vlm_service.pipeline.

Generate: proto -> pipeline.generate (drain check, convert, admission, preprocess, engine, deadline, abort on leaving)
-> proto responses; a typed service error becomes its gRPC status with rich details (convert.error_status).
The caller's identity (the API key's name when keys are on, else the client certificate's subject) is passed to
the pipeline for ownership (vlm_service/ownership.py). An exception no check foresaw is INTERNAL, message generic.
"""

from __future__ import annotations

import contextlib
import logging

import grpc

from vlm_service import errors
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.config import LimitsConfig
from vlm_service.ownership import Identity, client_id, identity_from_api_key, identity_from_auth_context
from vlm_service.pipeline import PREPROCESS_THREADS, Pipeline
from vlm_service.server import auth, convert

log = logging.getLogger(__name__)


class VisionLanguageServicer(vlm_pb2_grpc.VisionLanguageServiceServicer):
    """gRPC over a Pipeline (shared with the HTTP app when both run); see the module docstring."""

    def __init__(self, limits: LimitsConfig, runtime=None, preprocess_threads: int = PREPROCESS_THREADS, metrics=None,
                 pipeline: Pipeline | None = None, api_keys: auth.ApiKeys | None = None):
        self.pipeline = pipeline or Pipeline(limits, runtime, preprocess_threads, metrics)
        self._keys = api_keys  # None = no key check

    # --- RPCs -------------------------------------------------------------------------------------------------

    async def Generate(self, request: vlm_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        identity = await self._identity(context)
        outputs = self.pipeline.generate(
            request.request_id, lambda rid, t: convert.request_from_proto(request, rid, t),
            convert.count_images(request), peer=context.peer(), identity=identity,
            remaining_s=context.time_remaining())
        try:
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    yield convert.output_to_proto(out, client_id(out.request_id))
        except errors.ServiceError as exc:
            await self._fail(context, exc)
        except Exception as exc:
            await self._fail_unexpected(context, exc)

    async def GetModelInfo(self, request, context):
        await self._identity(context)
        try:
            info = self.pipeline.model_info()
        except errors.ServiceError as exc:
            await self._fail(context, exc)
        return convert.model_info_to_proto(info)  # model_id: --served-model-name when given (runtime.py)

    async def Abort(self, request: vlm_pb2.AbortRequest, context):
        identity = await self._identity(context)
        try:
            found = self.pipeline.abort(request.request_id, identity)
        except errors.ServiceError as exc:
            await self._fail(context, exc)
        return vlm_pb2.AbortResponse(found=found)

    # --- the pipeline's lifecycle, as the server drives it -----------------------------------------------------

    def attach(self, runtime) -> None:
        self.pipeline.attach(runtime)

    def start_drain(self) -> None:
        self.pipeline.start_drain()

    async def wait_idle(self, timeout: float) -> bool:
        return await self.pipeline.wait_idle(timeout)

    @property
    def draining(self) -> bool:
        return self.pipeline.draining

    @property
    def owners(self):
        """The pipeline's ownership map (vlm_service/ownership.py), shared with the HTTP app."""
        return self.pipeline.owners

    @property
    def inflight(self) -> int:
        return self.pipeline.inflight

    @property
    def metrics(self):
        return self.pipeline.metrics

    @metrics.setter
    def metrics(self, value) -> None:
        self.pipeline.metrics = value

    def close(self) -> None:
        self.pipeline.close()

    async def _identity(self, context) -> Identity:
        """The caller's API key name when keys are on (UNAUTHENTICATED without a valid key), else its verified
        client certificate (mTLS) or anonymous."""
        if self._keys is None:
            return identity_from_auth_context(context.auth_context())
        try:
            return identity_from_api_key(self._keys.identify(auth.grpc_metadata_value(context.invocation_metadata())))
        except errors.ServiceError as exc:
            await self._fail(context, exc)

    @staticmethod
    async def _fail(context, exc: errors.ServiceError):
        status = convert.error_status(exc)
        if exc.field and not str(exc).startswith(exc.field):  # the plain message names the field too (grpcurl users)
            status.message = f"{exc.field}: {exc}"
        log.debug("request refused: %s (%s)", exc, exc.code)  # the request line says it too
        await context.abort(convert.status_code(exc), status.message,
                            trailing_metadata=convert.status_metadata(status))

    @staticmethod
    async def _fail_unexpected(context, exc: Exception):
        """An error no check foresaw: the client gets INTERNAL with a generic message, the log the traceback."""
        if isinstance(exc, grpc.aio.AbortError):  # a status already chosen (context.abort)
            raise exc
        log.error("Generate failed unexpectedly", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, convert.INTERNAL_MESSAGE)
