"""16. Cost: images that are cheap to send but expensive to decode (tiny lossless WebPs declaring thousands of pixels
a side) cannot stall other requests or blow up memory.

- the issue's case under the DEFAULT limits: three requests of eight 38-byte WebPs declaring 6000x6000 each are
  refused from their headers (288M declared pixels > max_request_pixels), so nothing is decoded: a text-only
  bystander streams its first token within 1 s and the server's RSS grows by under 100 MiB (no 6000² frame,
  108 MB each, is ever allocated);
- within the pixel limit, the server-wide decode budget admits one 3000x3000 decode at a time (capacity 1.5 of its
  estimate): the requests over the budget wait holding no thread, the bystander (no images) never queues behind
  them, and peak RSS grows by at most the budget plus 200 MiB: the budget covers decode and preprocessing; the
  200 MiB are for the vision tower's activations on one resized image (not measured on their own),
  allocator slack, gRPC buffers and the bystander (measured here: 231 MiB growth with a 157 MiB budget);
- refusals: over the per-request pixels -> INVALID_ARGUMENT naming messages; an image that could never fit the
  budget, or a wait longer than max_decode_wait_s -> RESOURCE_EXHAUSTED naming messages.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time

import grpc
import pytest
from grpc_status import rpc_status
from PIL import Image

from reliability_helpers import collect, rel_config, wait_idle
from vlm_service._proto.vlm.v1 import vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.processor.budget import decode_bytes
from vlm_service.processor.vision import smart_resize
from vlm_service.server import convert
from tests.server_harness import running_server

MIB = 1 << 20


def _webp(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def webps():
    return {6000: _webp(6000), 3000: _webp(3000)}


class _PeakRSS:
    """Samples this process's RSS (the in-process server's) every 5 ms; `growth` = peak - RSS at start."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _ttft(stub) -> float:
    """Seconds to the bystander's first token (a text-only request)."""
    start = time.monotonic()
    stream = stub.Generate(build_request("bystander", max_tokens=2), timeout=60)
    next(stream)
    ttft = time.monotonic() - start
    collect(stream)
    return ttft


def _outcomes(stub, requests) -> list:
    """Send all at once on threads; each item: "OK" or the RpcError."""
    results = [None] * len(requests)

    def go(i):
        try:
            collect(stub.Generate(requests[i], timeout=120))
            results[i] = "OK"
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    return threads, results


def _join(threads):
    for t in threads:
        t.join(180)


@pytest.fixture(scope="module")
def default_server(state_dir):
    """Every limit at its default, but 8 images per request (the suite's shared server allows 2)."""
    with running_server(rel_config(state_dir, max_images_per_request=8), warmup=False) as srv:
        with srv.channel() as ch:
            yield srv, vlm_pb2_grpc.VisionLanguageServiceStub(ch)


def test_issue_case_under_default_limits(default_server, webps):
    _, stub = default_server
    attack = [build_request("look", [(webps[6000], "image/webp")] * 8, max_tokens=1) for _ in range(3)]
    with _PeakRSS() as rss:
        threads, results = _outcomes(stub, attack)
        ttft = _ttft(stub)
        _join(threads)
    print(f"issue case: bystander ttft {ttft:.3f}s, rss growth {rss.growth / MIB:.0f} MiB")
    assert ttft < 1.0
    for err in results:
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert convert.field_violations(rpc_status.from_call(err)) == ["messages"] and "pixels" in err.details()
    assert rss.growth < 100 * MIB, rss.growth / MIB


def _estimate(runtime, side: int) -> int:
    cfg = runtime.processor.image_config
    rh, rw = smart_resize(side, side, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return decode_bytes(side, side, 3, rh * rw)


@pytest.fixture(scope="module")
def budget_server(state_dir):
    one = 9_000_000 * 12 + 2 * MIB  # about one 3000² decode's estimate (checked against the real one below)
    cfg = rel_config(state_dir, max_images_per_request=8, max_request_pixels=0, max_decode_memory_bytes=int(one * 1.5),
                     max_decode_wait_s=60)
    with running_server(cfg, warmup=False) as srv:
        assert _estimate(srv.server.runtime, 3000) <= srv.server.runtime.processor.decode_budget.capacity
        assert 2 * _estimate(srv.server.runtime, 3000) > srv.server.runtime.processor.decode_budget.capacity
        yield srv


def test_decode_budget_bounds_memory_and_the_bystander_never_waits(budget_server, webps):
    from vlm_service.server.servicer import PREPROCESS_THREADS

    capacity = budget_server.server.runtime.processor.decode_budget.capacity
    requests = [build_request(f"look {i}", [(webps[3000], "image/webp")], max_tokens=1)
                for i in range(PREPROCESS_THREADS + 1)]  # more image requests than preprocess threads
    with budget_server.channel() as ch:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
        with _PeakRSS() as rss:
            threads, results = _outcomes(stub, requests)
            time.sleep(0.2)  # the image requests are in (decoding or waiting for the budget)
            ttft = _ttft(stub)
            _join(threads)
    print(f"budget case: bystander ttft {ttft:.3f}s, rss growth {rss.growth / MIB:.0f} MiB, "
          f"budget {capacity / MIB:.0f} MiB")
    assert results == ["OK"] * len(requests)
    assert ttft < 1.0
    assert rss.growth < capacity + 200 * MIB, (rss.growth / MIB, capacity / MIB)
    assert wait_idle(budget_server.server.runtime, 5.0) is not None
    assert budget_server.server.runtime.processor.decode_budget.used == 0


def _hold_budget(budget, nbytes: int):
    """Hold `nbytes` of the server's budget from a thread of the test's own (the budget is loop-agnostic);
    returns the Event that releases it."""
    release, held = threading.Event(), threading.Event()

    async def hold():
        async with budget.hold(nbytes):
            held.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)

    threading.Thread(target=asyncio.run, args=(hold(),), daemon=True).start()
    assert held.wait(10)
    return release


def test_waiting_for_the_budget_holds_no_thread(budget_server, webps):
    processor = budget_server.server.runtime.processor
    release = _hold_budget(processor.decode_budget, processor.decode_budget.capacity)
    try:
        with budget_server.channel() as ch:
            stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
            threads, results = _outcomes(stub, [build_request("w", [(webps[3000], "image/webp")], max_tokens=1)
                                                for _ in range(8)])
            time.sleep(0.2)
            assert _ttft(stub) < 1.0 and results == [None] * 8  # all eight still wait; text goes by
            release.set()
            _join(threads)
        assert results == ["OK"] * 8
    finally:
        release.set()


def test_budget_refusals_name_the_field(default_server, budget_server, webps):
    _, stub = default_server
    err = _refused(stub, build_request("x", [(webps[6000], "image/webp")] * 3, max_tokens=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("messages")
    with budget_server.channel() as ch:
        own = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
        err = _refused(own, build_request("x", [(webps[6000], "image/webp")], max_tokens=1))  # can never fit
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details().startswith("messages") and "decode budget" in err.details()


def test_a_wait_past_the_limit_is_resource_exhausted(state_dir, webps):
    cfg = rel_config(state_dir, max_decode_memory_bytes=200 * MIB, max_decode_wait_s=0.2)
    with running_server(cfg, warmup=False) as srv:
        budget = srv.server.runtime.processor.decode_budget
        release = _hold_budget(budget, budget.capacity)
        try:
            with srv.channel() as ch:
                stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
                err = _refused(stub, build_request("x", [(webps[3000], "image/webp")], max_tokens=1))
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and err.details().startswith("messages")
                release.set()
                assert collect(stub.Generate(build_request("x", [(webps[3000], "image/webp")], max_tokens=1)))[0]
        finally:
            release.set()


def _refused(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(request, timeout=60))
    return err.value
