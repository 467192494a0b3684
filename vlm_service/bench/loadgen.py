"""Asyncio gRPC load generator: Poisson (or gamma-bursty) arrivals, a concurrency cap, per-chunk timestamps.

A failed request is recorded with its status code; it never stops the run.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.bench.dataset import BenchRequest
from vlm_service.client import build_request

TIMING_FIELDS = ("queue_ms", "preprocess_ms", "decode_ms", "vision_ms", "prefill_ms", "ttft_ms", "e2e_ms")
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclass(frozen=True)
class Target:
    """Where the server listens and how to talk to it: host:port or unix:PATH; TLS unless insecure."""

    address: str
    insecure: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # TLS name override, e.g. when the cert names "localhost" and we dial 127.0.0.1
    backend: str = "grpc"  # grpc | openai (an OpenAI-compatible HTTP server: address is its URL; bench/openai_client)
    api_key: str | None = None  # sent as authorization: Bearer (gRPC metadata or HTTP header)
    model: str | None = None  # openai: the request's model (default: the first of GET /v1/models)


@dataclass(frozen=True)
class LoadPlan:
    """How to send: arrival rate (inf = all at once), concurrency cap, bounds, deadline."""

    request_rate: float = math.inf
    burstiness: float = 1.0  # 1 = Poisson; < 1 burstier, > 1 more regular (gamma inter-arrival times)
    max_concurrency: int | None = None
    num_prompts: int | None = None
    duration_s: float | None = None
    timeout_s: float | None = 60.0
    seed: int = 0
    ignore_eos: bool = True
    temperature: float | None = None
    logprobs: bool = False  # ask each token's logprob (a token with no text then still marks its arrival over HTTP)
    warmup_concurrency: int = 1  # warm-up requests in flight at once (the run's cap warms what a loaded server runs)


@dataclass
class RequestResult:
    """What one request did, client side, plus the server's own Complete.timings."""

    index: int
    request_id: str
    ok: bool = False
    status: str = "OK"
    error: str = ""
    send_s: float = 0.0  # when it was sent, seconds after the run started
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    num_images: int = 0
    pixels: int = 0
    finish_reason: str = ""
    server: dict[str, float] = field(default_factory=dict)

    @property
    def tpot_ms(self) -> float | None:
        """(E2E - TTFT) / (output_tokens - 1), as vLLM and SGLang define it; None for one-token outputs."""
        if not self.ok or self.output_tokens < 2 or self.ttft_ms is None:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        return {**asdict(self), "tpot_ms": self.tpot_ms}


def open_channel(target: Target) -> grpc.aio.Channel:
    """A grpc.aio channel to target: plaintext when asked (or unix: without any TLS file), else TLS / mTLS."""
    address = target.address
    no_tls_files = target.ca is None and target.cert is None
    if target.insecure or (address.startswith("unix:") and no_tls_files):
        return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(target.ca), private_key=_read(target.key), certificate_chain=_read(target.cert))
    options = list(_CHANNEL_OPTIONS)
    if target.server_name:
        options.append(("grpc.ssl_target_name_override", target.server_name))
    return grpc.aio.secure_channel(address, creds, options=options)


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def build_proto(req: BenchRequest, request_id: str, plan: LoadPlan) -> vlm_pb2.GenerateRequest:
    """One user turn: images first, then the text (the order Qwen-VL chat examples use). Built in place by
    client.build_request: it runs inside each request's timed span."""
    sampling = {} if plan.temperature is None else {"temperature": plan.temperature}
    if plan.logprobs:
        sampling["logprobs"] = True
    videos = [(v.data, v.mime_type, v.sample_fps) for v in getattr(req, "videos", ())]
    return build_request(req.prompt, [(im.data, im.mime_type) for im in req.images], request_id=request_id,
                         videos=videos, max_tokens=req.max_tokens, min_tokens=req.min_tokens, ignore_eos=plan.ignore_eos, **sampling)


async def _send(stub, req: BenchRequest, index: int, plan: LoadPlan, t0: float) -> RequestResult:
    """A gRPC stub goes through send_one; another backend (GrpcBackend, bench/openai_client.py) brings its send."""
    send = getattr(stub, "send", None)
    return await (send(req, index, plan, t0) if send is not None else send_one(stub, req, index, plan, t0))


async def send_one(stub, req: BenchRequest, index: int, plan: LoadPlan, t0: float,
                   metadata=None) -> RequestResult:
    """Stream one Generate call, stamping every chunk on arrival."""
    rid = f"bench-{uuid.uuid4().hex[:12]}-{index}"
    res = RequestResult(index, rid, num_images=len(req.images), pixels=req.pixels)
    start = time.perf_counter()
    res.send_s = start - t0
    last, complete = None, None
    try:
        async for resp in stub.Generate(build_proto(req, rid, plan), timeout=plan.timeout_s, metadata=metadata):
            now = time.perf_counter()
            if resp.HasField("complete"):
                complete = resp.complete
                continue
            n = len(resp.chunk.token_ids)
            if n == 0 and not resp.chunk.text:
                continue
            if last is None:
                res.ttft_ms = (now - start) * 1e3
            else:
                res.itl_ms.append((now - last) * 1e3)
            last = now
            res.output_tokens += n
        res.e2e_ms = (time.perf_counter() - start) * 1e3
        _finish(res, complete)
    except grpc.aio.AioRpcError as e:
        res.status, res.error = e.code().name, (e.details() or "")[:500]
    except Exception as e:  # noqa: BLE001 - a client-side failure is counted like any other error
        res.status, res.error = f"CLIENT_{type(e).__name__}", str(e)[:500]
    return res


def _finish(res: RequestResult, complete) -> None:
    if complete is None:
        res.status, res.error = "INCOMPLETE_STREAM", "stream ended without Complete"
        return
    if res.ttft_ms is None:
        res.status, res.error = "EMPTY_OUTPUT", "Complete arrived before any token"
        return
    res.ok = True
    res.finish_reason = vlm_pb2.FinishReason.Name(complete.finish_reason)
    u = complete.usage
    res.prompt_tokens, res.image_tokens, res.cached_tokens = u.prompt_tokens, u.image_tokens, u.cached_tokens
    if res.output_tokens == 0:
        res.output_tokens = u.completion_tokens
    res.server = {f: getattr(complete.timings, f) for f in TIMING_FIELDS}


def arrival_gaps(plan: LoadPlan, rng: np.random.Generator):
    """Seconds to wait before each next request: gamma(shape=burstiness, mean=1/rate); 0 when rate is inf."""
    while True:
        if math.isinf(plan.request_rate):
            yield 0.0
        else:
            theta = 1.0 / (plan.request_rate * plan.burstiness)
            yield float(rng.gamma(plan.burstiness, theta))


async def run_load(stub, requests: Sequence[BenchRequest], plan: LoadPlan) -> tuple[list[RequestResult], float]:
    """Send requests per plan; returns the results (in send order) and the run's wall time in seconds.

    Bounded by plan.num_prompts and/or plan.duration_s (no new request after it; in-flight ones finish). With only a
    duration, the request pool is cycled. Arrivals follow the rate; the concurrency cap then delays sending.
    """
    assert requests, "empty request pool"
    if plan.num_prompts is None and plan.duration_s is not None and math.isinf(plan.request_rate) \
            and not plan.max_concurrency:
        raise ValueError("--duration with an infinite --request-rate needs --max-concurrency or --num-prompts")
    limit = plan.num_prompts if plan.num_prompts is not None else (len(requests) if plan.duration_s is None else None)
    sem = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
    gaps = arrival_gaps(plan, np.random.default_rng(plan.seed + 1))
    t0 = time.perf_counter()
    # All-at-once with a cap: take the slot here, so a duration-bounded run never piles up unsent tasks.
    slot_here = sem is not None and math.isinf(plan.request_rate)
    tasks, i = [], 0
    while limit is None or i < limit:
        if slot_here:
            await sem.acquire()
        if _expired(plan, t0):
            if slot_here:
                sem.release()
            break
        req = requests[i % len(requests)]
        coro = _released(sem, stub, req, i, plan, t0) if slot_here else _capped(sem, stub, req, i, plan, t0)
        tasks.append(asyncio.create_task(coro))
        i += 1
        await asyncio.sleep(next(gaps))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - t0


def _expired(plan: LoadPlan, t0: float) -> bool:
    return plan.duration_s is not None and time.perf_counter() - t0 >= plan.duration_s


async def _released(sem, stub, req, index, plan, t0) -> RequestResult:
    try:
        return await _send(stub, req, index, plan, t0)
    finally:
        sem.release()


async def _capped(sem, stub, req, index, plan, t0) -> RequestResult:
    if sem is None:
        return await _send(stub, req, index, plan, t0)
    async with sem:
        return await _send(stub, req, index, plan, t0)


async def warmup(stub, requests: Sequence[BenchRequest], n: int, plan: LoadPlan) -> list[RequestResult]:
    """n requests before the measured run, plan.warmup_concurrency at a time (1: one after another); their results
    are reported apart, never counted. A loaded server meets batch shapes (several images in one vision batch, many
    prefills in one step) that single requests never show it, and pays one-time costs on first sight of each."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(max(1, plan.warmup_concurrency))

    async def one(i: int) -> RequestResult:
        async with sem:
            return await _send(stub, requests[i % len(requests)], -1 - i, plan, t0)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


class GrpcBackend:
    """A gRPC target with the backend interface the runner uses: send, info, prepare, close."""

    def __init__(self, target: Target):
        self.channel = open_channel(target)
        self.stub = vlm_pb2_grpc.VisionLanguageServiceStub(self.channel)
        self.address = target.address
        self._metadata = (("authorization", f"Bearer {target.api_key}"),) if target.api_key else None

    async def send(self, req: BenchRequest, index: int, plan: LoadPlan, t0: float) -> RequestResult:
        return await send_one(self.stub, req, index, plan, t0, self._metadata)

    async def info(self) -> dict:
        return await model_info(self.channel, metadata=self._metadata)

    def prepare(self, requests, plan: LoadPlan) -> None:
        """Nothing to do: the request proto is built in place within the timed span (0.1 ms)."""

    async def close(self) -> None:
        await self.channel.close()


def make_backend(target: Target):
    """GrpcBackend, or bench/openai_client.OpenAIBackend for target.backend == "openai"."""
    if target.backend == "openai":
        from vlm_service.bench.openai_client import OpenAIBackend

        return OpenAIBackend(target, target.api_key, target.model)
    return GrpcBackend(target)


async def model_info(channel, timeout_s: float = 10.0, metadata=None) -> dict:
    """The server's GetModelInfo as a dict ({} with an "error" key when it fails: the run goes on)."""
    from google.protobuf.json_format import MessageToDict

    try:
        info = await vlm_pb2_grpc.VisionLanguageServiceStub(channel).GetModelInfo(
            vlm_pb2.GetModelInfoRequest(), timeout=timeout_s, metadata=metadata)
        return MessageToDict(info, preserving_proto_field_name=True)
    except grpc.aio.AioRpcError as e:
        return {"error": f"{e.code().name}: {e.details()}"}
