"""The OpenAI-compatible HTTP app (FastAPI), a thin adapter over the same Pipeline as the gRPC servicer.

Routes: POST /v1/chat/completions (SSE when stream=true, ending `data: [DONE]`), GET /v1/models[/{id}], GET /health
(liveness), GET /health/ready and /ready (readiness: loaded and not draining), GET /metrics (with --http-metrics).
Errors are OpenAI-style bodies {"error": {message, type, param, code}} with the status of the service error
(http_convert.error_body), Retry-After on 429/503. API keys (server/auth.py) guard everything but health and metrics.
A client that goes away (HTTP disconnect) cancels its request at once: the pipeline aborts it in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from vlm_service import errors, types
from vlm_service.config import Config
from vlm_service.ownership import Identity, client_id, identity_from_api_key
from vlm_service.pipeline import Pipeline
from vlm_service.server import http_convert as hc
from vlm_service.server import http_media, http_peer
from vlm_service.server import http_responses as hr

_RETRY_AFTER = {429: "1", 503: "1"}
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


def json_response(status: int, obj: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(obj, status_code=status, headers=headers)


def error_response(exc: errors.ServiceError) -> JSONResponse:
    status, body = hr.error_body(exc)
    retry = _RETRY_AFTER.get(status)
    return json_response(status, body, {"Retry-After": retry} if retry else None)


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class FrontDoor:
    """What the routes need: config, pipeline, keys, the runtime (for the tokenizer) and metrics, once loaded."""

    def __init__(self, cfg: Config, pipeline: Pipeline, api_keys=None, server=None):
        self.cfg, self.pipeline, self.api_keys, self._server = cfg, pipeline, api_keys, server
        self._media_client = None

    @property
    def model_name(self) -> str:
        return self.cfg.model.served_model_name or self.cfg.model.model

    def identity(self, request) -> Identity:
        """As on gRPC: the API key's name when keys are on (Unauthenticated without a valid key), else the verified
        client certificate's identity (mTLS, server/http_peer.py) or anonymous."""
        if self.api_keys is None:
            return http_peer.identity_of(request.scope)
        return identity_from_api_key(self.api_keys.identify(request.headers.get("authorization")))

    def media_client(self):
        if self._media_client is None:
            import httpx

            self._media_client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                                   timeout=self.cfg.server.http.media_fetch_timeout_s)
        return self._media_client

    def token_text(self, token_id: int) -> str:
        runtime = getattr(self._server, "runtime", None)
        return runtime.tokenizer.decode([token_id]) if runtime is not None else ""

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise errors.NotFound(f"model {model[:60]!r} is not served here (this server serves "
                                  f"{self.model_name!r}; GET /v1/models)", field="model")

    async def read_body(self, request) -> bytearray:
        """The body, refused with 413 once it passes the request cap (the same cap as gRPC's receive limit)."""
        cap = self.cfg.server.limits.max_request_bytes
        declared = request.headers.get("content-length", "")
        too_large = errors.TooLarge(f"the request body is over the {cap} byte cap")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > cap:
                raise too_large
        return body  # not copied to bytes: the payloads are decoded from this buffer (http_payloads.py)

    async def chat(self, request):
        identity = self.identity(request)
        call = hc.chat_from_raw(await self.read_body(request))
        self.check_model(call.model)
        await http_media.resolve(call, self.cfg.server.http, self.media_client())
        client = request.client
        outputs = self.pipeline.generate(
            request.headers.get("x-request-id", ""), call.build, call.n_images,
            peer=f"http:{client.host}:{client.port}" if client else "http", identity=identity)
        return ChatResponse(outputs, call, self)

    def models(self) -> dict:
        info = self._model_card()
        return {"object": "list", "data": [info]}

    def _model_card(self) -> dict:
        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "vlm-service"}
        with contextlib.suppress(errors.ServiceError):
            card["max_model_len"] = self.pipeline.model_info().max_context
        return card

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        metrics = self.pipeline.metrics
        return generate_latest(metrics.registry) if metrics is not None else b""

    async def close(self) -> None:
        if self._media_client is not None:
            await self._media_client.aclose()


class ChatResponse(Response):
    """Runs the request as the response: the first engine output decides the status (an error before it is an
    OpenAI error body); a disconnect cancels the work at once (the pipeline then aborts the engine request)."""

    def __init__(self, outputs, call: hc.ChatCall, door: FrontDoor):  # noqa: D107 - Response.__init__ not wanted
        self.outputs, self.call, self.door = outputs, call, door
        self.status_code, self.background = 200, None

    async def __call__(self, scope, receive, send):
        work = asyncio.ensure_future(self._run(scope, send))
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def _run(self, scope, send):
        async with contextlib.aclosing(self.outputs) as outs:
            try:
                first = await outs.__anext__()
            except errors.ServiceError as exc:
                return await error_response(exc)(scope, None, send)
            shape = hr.ResponseShape(client_id(first.request_id), self.door.model_name, self.door.token_text,
                                     self.call.sampling.logprobs)
            if self.call.stream:
                await _stream(send, shape, first, outs, self.call.include_usage)
            else:
                await _collect(scope, send, shape, first, outs)


async def _send_start(send, shape: hr.ResponseShape, headers) -> None:
    rid = shape.id.removeprefix("chatcmpl-").encode()
    await send({"type": "http.response.start", "status": 200, "headers": [*headers, (b"x-request-id", rid)]})


async def _stream(send, shape: hr.ResponseShape, first, outs, include_usage: bool) -> None:
    """SSE: the role chunk, a chunk per non-empty delta, the finish chunk, usage (when asked), [DONE]. A failure
    after the start is an error event (the status line is gone), then [DONE]."""
    await _send_start(send, shape, _SSE_HEADERS)

    async def body(data: bytes, more: bool = True):
        await send({"type": "http.response.body", "body": data, "more_body": more})

    await body(hr.sse(shape.chunk({"role": "assistant", "content": ""})))
    out = first
    try:
        while True:
            if isinstance(out, types.Finished):
                await body(hr.sse(shape.final_chunk(out)))
                if include_usage:
                    await body(hr.sse(shape.usage_chunk(out)))
                break
            if out.text or out.logprobs:
                await body(hr.sse(shape.delta_chunk(out)))
            out = await outs.__anext__()
    except errors.ServiceError as exc:
        await body(hr.sse(hr.error_body(exc)[1]))
    await body(hr.SSE_DONE, more=False)


async def _collect(scope, send, shape: hr.ResponseShape, first, outs) -> None:
    deltas, out = [], first
    try:
        while not isinstance(out, types.Finished):
            deltas.append(out)
            out = await outs.__anext__()
    except errors.ServiceError as exc:
        return await error_response(exc)(scope, None, send)
    data = json.dumps(shape.completion(deltas, out)).encode()
    await _send_start(send, shape, [(b"content-type", b"application/json")])
    await send({"type": "http.response.body", "body": data, "more_body": False})


def build_app(door: FrontDoor):
    """The FastAPI app of one server."""
    app = FastAPI(title="vlm-service", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(errors.ServiceError)
    async def _service_error(request, exc):
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc):
        code = {404: errors.NotFound, 405: errors.InvalidInput}.get(exc.status_code, errors.InvalidInput)
        status, body = hr.error_body(code(f"{request.method} {request.url.path}: {exc.detail}"))
        return json_response(exc.status_code, body)

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        return error_response(errors.InternalError("internal error"))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await door.chat(request)

    @app.get("/v1/models")
    async def models(request: Request):
        door.identity(request)
        return door.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        door.identity(request)
        door.check_model(model_id)
        return door._model_card()

    @app.get("/health")
    async def health():
        if door.pipeline.draining:
            return json_response(503, {"status": "draining"})
        return {"status": "ok"}

    async def ready():
        if door.pipeline.ready:
            return {"status": "ready"}
        return json_response(503, {"status": "draining" if door.pipeline.draining else "loading"},
                             {"Retry-After": "1"})

    app.add_api_route("/health/ready", ready, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    if door.cfg.server.http.metrics:
        @app.get("/metrics")
        async def metrics():
            return Response(door.metrics_text(), media_type="text/plain; version=0.0.4")

    return app
