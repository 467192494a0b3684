"""The load generator against the fake servicer: rate, concurrency, bounds, errors counted not fatal."""

import asyncio
import dataclasses

import pytest
from fake_server import FakeServicer, start_fake

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.bench.dataset import BenchRequest, DatasetSpec, build_dataset
from vlm_service.demo.images import ImageItem
from vlm_service.bench.loadgen import LoadPlan, Target, build_proto, open_channel, run_load, warmup
from vlm_service.bench.metrics import summarize

REQS = build_dataset(DatasetSpec(num_requests=8, resolution="32x32", output_len=(3, 5), input_len=(4, 4)))


def _bench(plan, requests=REQS, servicer=None):
    async def go():
        fake = servicer or FakeServicer()
        server, address = await start_fake(fake)
        channel = open_channel(Target(address, insecure=True))
        try:
            results, duration = await run_load(vlm_pb2_grpc.VisionLanguageServiceStub(channel), requests, plan)
        finally:
            await channel.close()
            await server.stop(None)
        return results, duration, fake
    return asyncio.run(go())


def _consistent(results, requests):
    for r in results:
        assert r.ok, r
        req = requests[r.index % len(requests)]
        assert 0 < r.ttft_ms <= r.e2e_ms
        assert r.output_tokens == req.max_tokens and len(r.itl_ms) == r.output_tokens - 1
        assert r.num_images == 1 and r.pixels == 32 * 32 and r.finish_reason == "LENGTH"
        assert r.server["e2e_ms"] > 0 and r.prompt_tokens > 0


def test_fixed_rate_run_completes_with_consistent_metrics():
    results, duration, fake = _bench(LoadPlan(request_rate=40.0, num_prompts=8, seed=1))
    assert [r.index for r in results] == list(range(8)) and fake.seen == 8
    _consistent(results, REQS)
    sends = [r.send_s for r in results]
    assert sends == sorted(sends) and sends[-1] > 0.02  # Poisson gaps, not all at once
    m = summarize(results, duration)
    assert m["completed"] == 8 and m["failed"] == 0
    assert m["total_output_tokens"] == sum(r.max_tokens for r in REQS)
    assert m["ttft_ms"]["max"] <= m["e2e_ms"]["max"] and m["ttft_ms"]["mean"] <= m["e2e_ms"]["mean"]
    assert m["itl_ms"]["count"] == sum(r.max_tokens - 1 for r in REQS)


def test_fixed_concurrency_caps_requests_in_flight():
    results, _, fake = _bench(LoadPlan(max_concurrency=2, num_prompts=8))
    _consistent(results, REQS)
    assert fake.max_in_flight == 2


def test_duration_bounds_the_run_and_cycles_the_pool():
    results, duration, _ = _bench(LoadPlan(max_concurrency=3, duration_s=0.3))
    assert len(results) > len(REQS)  # the pool was cycled
    # a request is admitted before 0.3 s; its task may start a little later on a loaded machine
    assert all(r.send_s < 0.3 + 0.25 for r in results) and duration < 3.0
    _consistent(results, REQS)
    with pytest.raises(ValueError):
        _bench(LoadPlan(duration_s=0.1))  # unbounded: no rate, no cap, no count


def test_bad_image_and_deadline_miss_are_counted_not_fatal():
    bad = BenchRequest("hello", (ImageItem(b"this is text", "image/png", 4, 4),), 3, 3)
    slow = dataclasses.replace(REQS[0], prompt="SLOW please")
    requests = [REQS[0], bad, slow, REQS[1]]
    results, duration, _ = _bench(LoadPlan(num_prompts=4, timeout_s=0.3), requests)
    assert [r.status for r in results] == ["OK", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "OK"]
    assert "image" in results[1].error
    m = summarize(results, duration)
    assert m["completed"] == 2 and m["failed"] == 2
    assert m["errors"] == {"INVALID_ARGUMENT": 1, "DEADLINE_EXCEEDED": 1}


def test_unreachable_server_is_counted():
    async def go():
        channel = open_channel(Target("127.0.0.1:1", insecure=True))
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        res, _ = await run_load(stub, REQS[:2], LoadPlan(timeout_s=2.0))
        await channel.close()
        return res
    results = asyncio.run(go())
    assert [r.status for r in results] == ["UNAVAILABLE", "UNAVAILABLE"]


def test_warmup_is_sequential_and_apart():
    async def go():
        fake = FakeServicer()
        server, address = await start_fake(fake)
        channel = open_channel(Target(address, insecure=True))
        res = await warmup(vlm_pb2_grpc.VisionLanguageServiceStub(channel), REQS, 3, LoadPlan())
        await channel.close()
        await server.stop(None)
        return res, fake
    results, fake = asyncio.run(go())
    assert [r.index for r in results] == [-1, -2, -3] and fake.max_in_flight == 1 and all(r.ok for r in results)


def test_warmup_concurrency_caps_requests_in_flight():
    async def go():
        fake = FakeServicer(prefill_s=0.05)
        server, address = await start_fake(fake)
        channel = open_channel(Target(address, insecure=True))
        res = await warmup(vlm_pb2_grpc.VisionLanguageServiceStub(channel), REQS, 6, LoadPlan(warmup_concurrency=3))
        await channel.close()
        await server.stop(None)
        return res, fake
    results, fake = asyncio.run(go())
    assert sorted(r.index for r in results) == [-6, -5, -4, -3, -2, -1] and all(r.ok for r in results)
    assert fake.max_in_flight == 3 and fake.seen == 6


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_request_built_in_place_is_the_nested_message(temperature):
    # build_proto fills the request in place (fast with upb); it must be the message the plain nested constructors
    # give: images first with their mime types, then the text, and the sampling fields
    images = (ImageItem(b"\x89PNG one", "image/png", 4, 4), ImageItem(b"\xff\xd8 two", "image/jpeg", 8, 8))
    req = BenchRequest("describe", images, max_tokens=7, min_tokens=5)
    plan = LoadPlan(temperature=temperature, ignore_eos=True)
    parts = [vlm_pb2.ContentPart(image=vlm_pb2.Image(data=im.data, mime_type=im.mime_type)) for im in images]
    parts.append(vlm_pb2.ContentPart(text="describe"))
    sampling = vlm_pb2.SamplingParams(max_tokens=7, min_tokens=5, ignore_eos=True)
    if temperature is not None:
        sampling.temperature = temperature
    nested = vlm_pb2.GenerateRequest(request_id="r1", sampling=sampling,
                                     messages=[vlm_pb2.Message(role="user", content=parts)])
    built = build_proto(req, "r1", plan)
    assert built == nested
    assert built.SerializeToString(deterministic=True) == nested.SerializeToString(deterministic=True)
