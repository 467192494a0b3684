"""Fuzz: hypothesis-generated requests against the real server, zero crashes, zero bystander failures.

Requests carry random bytes as images, random sampling values (NaN, inf, negative, huge), random unicode, huge and
empty fields, the bounded strings of issue 12 (long / unsafe request ids, roles, mime types, stop strings and their
counts, special tokens in text, images declaring huge sizes), raw protobuf bytes (random, and valid requests cut or
with a byte flipped, sent through a raw unary_stream with identity serializers) and Aborts. They are sent in
concurrent batches over one grpc.aio channel, while a bystander stream runs the same greedy request over and over
and must get its exact tokens every time. VLM_FUZZ_CASES sets the number of requests (default 300; the release
check runs 10,000). Every answer must be a success (a stream
ending with exactly one Complete) or one of the documented status codes:

- INVALID_ARGUMENT    bad content: images, roles, sampling values, empty messages, prompt over the context;
- RESOURCE_EXHAUSTED  message over the receive cap, or the admission queue is full;
- ALREADY_EXISTS      two requests of a batch drew the same request_id.

Anything else (INTERNAL, UNKNOWN, UNAVAILABLE, a hang, a stream without its Complete) fails the test; afterwards the
server must still be SERVING with an idle engine.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_helpers import CONTEXT, RECEIVE_CAP, collect, png, wait_idle
from test_05_decompression_bomb import bomb_png
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request

ALLOWED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS"}
BATCH = 25
CASES = int(os.environ.get("VLM_FUZZ_CASES", "300"))
EXAMPLES = max(1, CASES // BATCH)
GOOD_IMAGES = [png(w, h, seed=w * h) for w, h in ((4, 4), (8, 30), (24, 24), (33, 17))]
GOOD_IMAGES.append(png(20, 20, seed=9, fmt="JPEG"))
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>",
            "\n<|im_start|>system\n", "<|im_end|>\n<|im_start|>assistant\n"]
GENERATE, ABORT = "/vlm.v1.VisionLanguageService/Generate", "/vlm.v1.VisionLanguageService/Abort"


def _rare(rare, common, one_in: int = 100):
    """`rare` about once in `one_in` draws, else `common` (hypothesis' one_of has no weights)."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == 1 else common)


_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(0, 2, width=32))
_huge_text = st.just("\u00e9\U0001F600 z" * (1 << 14))  # 64 Ki characters
_over_context = st.just("word " * (CONTEXT + 5))
_special_text = st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(max_size=8)), max_size=4).map("".join)
_text = _rare(st.one_of(_huge_text, _over_context),
              st.one_of(st.text(max_size=40), st.just(""), _special_text), 50)
_long = st.sampled_from([65, 129, 257, 70_000]).map(lambda n: "\n\x1b" + "x" * n)  # just over each bound, or huge
_mime = st.one_of(st.sampled_from(["", "image/png", "image/jpeg", "image/webp", "image/gif", "text/plain",
                                   "image/x-\u2603"]), _rare(_long, st.text(max_size=70), 20))
_good_image = st.sampled_from(GOOD_IMAGES)
_image_bytes = _rare(st.sampled_from([b"\0" * (RECEIVE_CAP + 1), bomb_png()]),
                     st.one_of(st.binary(max_size=64), _good_image, _good_image.map(lambda b: b[: len(b) // 3])), 200)
_image = st.builds(vlm_pb2.Image, data=_image_bytes, mime_type=_mime)
_part = st.one_of(st.builds(vlm_pb2.ContentPart, text=_text), st.builds(vlm_pb2.ContentPart, image=_image),
                  st.just(vlm_pb2.ContentPart()))
_role = st.one_of(st.sampled_from(["user", "user", "system", "assistant", "User", "tool", "\nuser"]),
                  st.text(max_size=8), _rare(_long, st.just("user"), 50))
_message = st.builds(vlm_pb2.Message, role=_role, content=st.lists(_part, max_size=3))
_safe_id = st.from_regex(r"[A-Za-z0-9._\-:/]{1,130}", fullmatch=True)
_request_id = st.one_of(st.just(""), st.text(max_size=3), _safe_id, _rare(st.one_of(_huge_text, _long), _safe_id, 50))

@st.composite
def _sampling(draw) -> vlm_pb2.SamplingParams:
    """Cheap generations only: max_tokens is 1-3 when valid (or invalid), never unset."""
    sp = vlm_pb2.SamplingParams(max_tokens=draw(st.one_of(st.integers(1, 3), st.integers(-(2 ** 31), 0))))
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        if draw(st.booleans()):
            setattr(sp, name, draw(_floats))
    if draw(st.booleans()):
        sp.top_k = draw(st.integers(-(2 ** 31), 2 ** 31 - 1))
    if draw(st.booleans()):
        sp.seed = draw(st.integers(0, 2 ** 64 - 1))
    sp.min_tokens = draw(st.one_of(st.just(0), st.integers(-5, 5)))
    sp.stop.extend(draw(_rare(st.one_of(st.lists(st.just("s"), min_size=17, max_size=17), st.lists(_long, max_size=1)),
                              st.lists(st.text(max_size=6), max_size=2), 30)))
    sp.stop_token_ids.extend(draw(_rare(st.lists(st.integers(0, 9), min_size=65, max_size=65),
                                        st.lists(st.integers(-(2 ** 31), 2 ** 31 - 1), max_size=2), 30)))
    sp.ignore_eos, sp.logprobs = draw(st.booleans()), draw(st.booleans())
    sp.top_logprobs = draw(st.one_of(st.just(0), st.integers(-3, 25)))
    return sp


_wild_request = st.builds(vlm_pb2.GenerateRequest, request_id=_request_id, messages=st.lists(_message, max_size=3),
                          sampling=_sampling())
# plausible requests (a user turn of short text and maybe a real image, sane sampling) so successes are common too
_valid_part = st.one_of(st.builds(vlm_pb2.ContentPart, text=st.text(min_size=1, max_size=30)),
                        st.builds(vlm_pb2.ContentPart, image=st.builds(vlm_pb2.Image, data=_good_image)))
_valid_sampling = st.builds(vlm_pb2.SamplingParams, max_tokens=st.integers(1, 2), temperature=st.floats(0, 1.5),
                            top_p=st.floats(0.05, 1), top_k=st.integers(0, 50), seed=st.integers(0, 2 ** 64 - 1))
_valid_request = st.builds(vlm_pb2.GenerateRequest, request_id=st.just(""), sampling=_valid_sampling,
                           messages=st.lists(st.builds(vlm_pb2.Message, role=st.just("user"),
                                                       content=st.lists(_valid_part, min_size=1, max_size=2)),
                                             min_size=1, max_size=1))



@st.composite
def _mutated(draw) -> bytes:
    """A valid request's bytes, cut short or with one byte replaced (malformed varints, lengths, UTF-8)."""
    data = draw(_valid_request).SerializeToString()
    i = draw(st.integers(0, max(0, len(data) - 1)))
    if draw(st.booleans()):
        return data[:i]
    return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]


_raw = st.one_of(st.binary(max_size=64), _mutated())
_abort = st.builds(vlm_pb2.AbortRequest, request_id=_request_id)
_case = st.one_of(_wild_request.map(lambda r: ("proto", r)), _valid_request.map(lambda r: ("proto", r)),
                  _raw.map(lambda b: ("raw", b)), _abort.map(lambda a: ("abort", a)),
                  st.binary(max_size=16).map(lambda b: ("raw_abort", b)))


async def _stream_outcome(call, decode=lambda r: r) -> str:
    try:
        responses = [decode(r) async for r in call]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    collect(iter(responses))  # exactly one Complete, last
    return "OK"


async def _unary_outcome(call) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def _outcome(channel, stub, case) -> str:
    kind, value = case
    if kind == "proto":
        return await _stream_outcome(stub.Generate(value, timeout=60))
    if kind == "raw":  # no serializers: the bytes go on the wire as they are
        return await _stream_outcome(channel.unary_stream(GENERATE)(value, timeout=60),
                                     vlm_pb2.GenerateResponse.FromString)
    if kind == "abort":
        return await _unary_outcome(stub.Abort(value, timeout=30))
    return await _unary_outcome(channel.unary_unary(ABORT)(value, timeout=30))


class _Client:
    """A grpc.aio channel on its own event-loop thread; `send(batch)` runs a batch concurrently."""

    def __init__(self, target: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = self._run(self._open(target))

    async def _open(self, target):
        opts = [("grpc.max_send_message_length", 2 * RECEIVE_CAP), ("grpc.max_receive_message_length", 64 << 20)]
        return grpc.aio.insecure_channel(target, options=opts)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(300)

    def send(self, batch) -> list[str]:
        async def go():
            stub = vlm_pb2_grpc.VisionLanguageServiceStub(self.channel)
            return await asyncio.gather(*(_outcome(self.channel, stub, c) for c in batch))
        return self._run(go())

    def close(self):
        self._run(self.channel.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Bystander:
    """The same greedy request, again and again on its own channel, until stopped; every run must give the tokens it
    gave alone before the fuzz began."""

    REQUEST = dict(max_tokens=24, ignore_eos=True)

    def __init__(self, server):
        self._channel = server.channel()
        self._stub = vlm_pb2_grpc.VisionLanguageServiceStub(self._channel)
        self.expected = self._tokens()
        self.runs, self.failures, self._stop = 0, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _tokens(self) -> list[int]:
        return collect(self._stub.Generate(build_request("the bystander keeps talking", **self.REQUEST),
                                           timeout=120))[0]

    def _loop(self):
        while not self._stop.is_set():
            try:
                tokens = self._tokens()
                if tokens != self.expected:
                    self.failures.append(f"tokens {tokens} != {self.expected}")
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self.runs += 1

    def stop(self):
        self._stop.set()
        self._thread.join(180)
        self._channel.close()


@pytest.mark.timeout(max(600, CASES // 2))  # ~6 cases/s on a 2-core CPU machine: 10,000 need ~30 min
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # "overly large repr" of huge fields
def test_fuzz_with_a_bystander(server):
    client, seen, kinds = _Client(server.target), collections.Counter(), collections.Counter()
    bystander = _Bystander(server)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_case, min_size=BATCH, max_size=BATCH))
    def run(batch):
        outcomes = client.send(batch)
        seen.update(outcomes)
        kinds.update(f"{kind}:{out}" for (kind, _), out in zip(batch, outcomes))
        assert set(outcomes) <= ALLOWED, collections.Counter(outcomes)  # the batch itself is not printed: huge

    try:
        run()
    finally:
        bystander.stop()
        client.close()
    print("fuzz outcomes:", dict(seen), "by kind:", dict(kinds), f"bystander runs: {bystander.runs}")
    assert sum(seen.values()) == EXAMPLES * BATCH
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0 and kinds["raw:INVALID_ARGUMENT"] > 0
    assert bystander.runs > 0 and bystander.failures == [], bystander.failures[:3]
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert wait_idle(server.server.runtime, 5.0) is not None, server.server.runtime.engine.stats()
    with server.channel() as ch:
        assert collect(vlm_pb2_grpc.VisionLanguageServiceStub(ch).Generate(build_request("ok?", max_tokens=2)))[0]
