"""`--backend openai`: the harness's dataset sent to any OpenAI-compatible server (ours, vLLM, SGLang) as streaming
chat completions with data-URL images and videos.

Timing as for gRPC (bench/loadgen.py): TTFT = send -> first SSE chunk with content (or, with --logprobs, a
logprobs entry: a token that decodes to no text); ITL = gaps between such chunks; E2E = send -> [DONE]. Output
tokens from the final usage chunk (stream_options.include_usage), else the content chunks. Request bodies are JSON-encoded (base64 images included) before the timed runs, as the dataset's
images are: a client would encode once, and the encode of a 1024² PNG (~4 MB of base64) is not the server's time.
Greedy unless --temperature (vLLM's default temperature is 1.0, so 0 is sent explicitly); min_tokens and ignore_eos
are vLLM's / SGLang's extra fields.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time
import uuid

from vlm_service.bench.dataset import BenchRequest
from vlm_service.bench.records import LoadPlan, RequestResult, Target

OPENAI_PREFIX = "openai:"  # a --compare entry "openai:http://host:port" is measured with this backend


def base_url(address: str) -> str:
    """http(s)://host:port[/v1] -> the API root ending in /v1 (a bare host:port is taken as http)."""
    url = address.removeprefix(OPENAI_PREFIX).rstrip("/")
    url = url if "://" in url else "http://" + url
    return url if url.endswith("/v1") else url + "/v1"


def _data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


def chat_body(req: BenchRequest, plan: LoadPlan, model: str) -> dict:
    """The chat-completions body of one benchmark request: one user turn, images first, then videos (video_url, as
    vLLM and SGLang accept them; a sampling fps goes in the part's "fps", this server's field), then the text."""
    parts = [{"type": "image_url", "image_url": {"url": _data_url(im.mime_type, im.data)}} for im in req.images]
    parts += [{"type": "video_url", "video_url": {"url": _data_url(v.mime_type, v.data),
                                                  **({"fps": v.sample_fps} if v.sample_fps else {})}}
              for v in req.videos]
    parts.append({"type": "text", "text": req.prompt})
    return {"model": model, "messages": [{"role": "user", "content": parts}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": req.max_tokens, "min_tokens": req.min_tokens,
            "ignore_eos": plan.ignore_eos, "temperature": plan.temperature or 0.0,
            **({"logprobs": True} if plan.logprobs else {})}


def _verify(target: Target):
    if target.ca is None and target.cert is None:
        return True
    ctx = ssl.create_default_context(cafile=str(target.ca) if target.ca else None)
    if target.cert is not None:
        ctx.load_cert_chain(target.cert, target.key)
    return ctx


class OpenAIBackend:
    """One OpenAI-compatible server: `send` has loadgen's send_one signature, so run_load/warmup drive it."""

    def __init__(self, target: Target, api_key: str | None = None, model: str | None = None):
        import httpx

        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        # TCP_NODELAY: httpcore writes the request head and body separately; with Nagle on, the body waits for the
        # ACK of the head, which the server delays (up to 40 ms on Linux): that would be counted in TTFT
        transport = httpx.AsyncHTTPTransport(verify=_verify(target), limits=limits,
                                             socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.http = httpx.AsyncClient(base_url=base_url(target.address), headers=headers, transport=transport,
                                      timeout=httpx.Timeout(None), trust_env=False)
        self.address, self.model = target.address, model
        self._bodies: dict[int, bytes] = {}

    async def info(self) -> dict:
        """GET /v1/models (the first model is used when --model is not given); {"error": ...} when it fails."""
        try:
            resp = await self.http.get("/models", timeout=10.0)
            resp.raise_for_status()
            models = [m["id"] for m in resp.json().get("data", [])]
        except Exception as exc:  # noqa: BLE001 - the run goes on (and fails per request if the server is gone)
            return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        self.model = self.model or (models[0] if models else "")
        return {"backend": "openai", "models": models, "model": self.model}

    def prepare(self, requests, plan: LoadPlan) -> None:
        """Encode every request body now, before any timed span."""
        for req in requests:
            self._bodies.setdefault(id(req), json.dumps(chat_body(req, plan, self.model or "")).encode())

    async def send(self, req: BenchRequest, index: int, plan: LoadPlan, t0: float) -> RequestResult:
        rid = f"bench-{uuid.uuid4().hex[:12]}-{index}"
        res = RequestResult(index, rid, num_images=len(req.images), pixels=req.pixels)
        body = self._bodies.get(id(req)) or json.dumps(chat_body(req, plan, self.model or "")).encode()
        start = time.perf_counter()
        res.send_s = start - t0
        try:
            async with asyncio.timeout(plan.timeout_s):
                await self._stream(res, body, rid, start)
        except TimeoutError:
            res.ok, res.status, res.error = False, "DEADLINE_EXCEEDED", f"over {plan.timeout_s}s"
        except Exception as exc:  # noqa: BLE001 - a client-side failure is counted like any other error
            res.ok, res.status, res.error = False, f"CLIENT_{type(exc).__name__}", str(exc)[:500]
        return res

    async def _stream(self, res: RequestResult, body: bytes, rid: str, start: float) -> None:
        async with self.http.stream("POST", "/chat/completions", content=body, headers={"x-request-id": rid}) as resp:
            if resp.status_code != 200:
                res.status, res.error = f"HTTP_{resp.status_code}", (await resp.aread())[:500].decode("utf-8", "replace")
                return
            state = _StreamState(res, start)
            async for line in resp.aiter_lines():
                if line.startswith("data:") and state.event(line[5:].strip(), time.perf_counter()):
                    break
            state.finish(time.perf_counter())

    async def close(self) -> None:
        await self.http.aclose()


class _StreamState:
    """Folds SSE events into a RequestResult: stamps content chunks, keeps usage and the finish reason."""

    def __init__(self, res: RequestResult, start: float):
        self.res, self.start, self.last, self.usage, self.done, self.chunks = res, start, None, None, False, 0

    def event(self, data: str, now: float) -> bool:
        """True at [DONE]."""
        if data == "[DONE]":
            self.done = True
            return True
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(f"error event: {str(event['error'])[:300]}")
        self.usage = event.get("usage") or self.usage
        for choice in event.get("choices") or ():
            if (choice.get("delta") or {}).get("content") or (choice.get("logprobs") or {}).get("content"):
                self._stamp(now)  # a token: text, or (with --logprobs) a token whose text is empty
            self.res.finish_reason = choice.get("finish_reason") or self.res.finish_reason
        return False

    def _stamp(self, now: float) -> None:
        if self.last is None:
            self.res.ttft_ms = (now - self.start) * 1e3
        else:
            self.res.itl_ms.append((now - self.last) * 1e3)
        self.last, self.chunks = now, self.chunks + 1

    def finish(self, now: float) -> None:
        res = self.res
        res.e2e_ms = (now - self.start) * 1e3
        if not self.done or res.ttft_ms is None:
            res.status = "INCOMPLETE_STREAM" if not self.done else "EMPTY_OUTPUT"
            res.error = "the stream ended without [DONE]" if not self.done else "no content before [DONE]"
            return
        res.ok = True
        u = self.usage or {}
        res.output_tokens = u.get("completion_tokens") or self.chunks
        res.prompt_tokens = u.get("prompt_tokens") or 0
        res.cached_tokens = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
