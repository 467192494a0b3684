"""Asyncio gRPC load generator: Poisson (or gamma-bursty) arrivals, a concurrency cap, per-chunk timestamps.

A failed request is recorded with its status code; it never stops the run.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.bench.dataset import BenchRequest
from vlm_service.bench.openai_client import OpenAIBackend
from vlm_service.bench.records import TIMING_FIELDS, LoadPlan, RequestResult, Target  # noqa: F401  (re-exported)
from vlm_service.client import build_request

_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


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
