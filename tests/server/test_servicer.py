"""The real grpc.aio server (in-process, plaintext loopback) over a fake runtime: the stream contract and the
reliability rules that do not need a model."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_status import rpc_status

from tests.server.fakes import FakeEngine, fake_runtime
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.config import Config, LimitsConfig, ServerConfig, TLSConfig
from vlm_service.server import convert
from tests.server_harness import running_server


def _cfg(tmp_path, **limits) -> Config:
    lim = LimitsConfig(max_images_per_request=2, max_request_bytes=1 << 20, **limits)
    return Config(server=ServerConfig(port=0, state_dir=tmp_path, tls=TLSConfig(insecure=True), limits=lim,
                                      drain_timeout_s=10))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    rt = fake_runtime(FakeEngine(max_waiting=4, delay=0.01))
    with running_server(_cfg(tmp_path_factory.mktemp("srv")), load_runtime=lambda cfg: rt) as srv:
        channel = srv.channel()
        yield srv, rt, vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        channel.close()


def _collect(stream):
    chunks, completes = [], []
    for resp in stream:
        (chunks if resp.HasField("chunk") else completes).append(resp)
    return chunks, completes


def _wait_free(rt, timeout=2.0):
    end = time.monotonic() + timeout
    while rt.engine.reserved and time.monotonic() < end:
        time.sleep(0.01)
    return not rt.engine.reserved


def test_stream_ends_with_one_complete_and_echoes_generated_id(env):
    _, _, stub = env
    chunks, completes = _collect(stub.Generate(build_request("hi", max_tokens=5)))
    assert [c.chunk.token_ids[0] for c in chunks] == [100, 101, 102, 103, 104]
    assert len(completes) == 1 and completes[0].complete.finish_reason == vlm_pb2.LENGTH
    ids = {r.request_id for r in chunks + completes}
    assert len(ids) == 1 and ids.pop() != ""


def test_bad_image_names_the_field_and_next_request_succeeds(env):
    _, rt, stub = env
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("look", [b"bad"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err.value)) == ["messages[0].content[0].image"]
    assert _wait_free(rt)
    _, completes = _collect(stub.Generate(build_request("again", [b"ok"], max_tokens=2)))
    assert len(completes) == 1


def test_too_many_images_refused_before_decode(env):
    _, rt, stub = env
    before = rt.processor.calls
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("x", [b"a", b"b", b"c"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rt.processor.calls == before and not rt.engine.reserved


@pytest.mark.parametrize("field,value", [("top_p", 0.0), ("temperature", -1.0), ("top_logprobs", 21),
                                         ("max_tokens", 0), ("repetition_penalty", 0.0)])
def test_bad_sampling_names_the_field(env, field, value):
    _, _, stub = env
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("x", **{field: value})))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err.value)) == [f"sampling.{field}"]


def test_duplicate_in_flight_id_then_reuse(env):
    _, rt, stub = env
    first = stub.Generate(build_request("a", request_id="dup", max_tokens=20))
    next(first)  # in flight now
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("b", request_id="dup")))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    _, completes = _collect(first)
    assert len(completes) == 1
    _, completes = _collect(stub.Generate(build_request("c", request_id="dup", max_tokens=1)))
    assert completes[0].request_id == "dup"


def test_admission_refuses_exactly_the_excess_before_decode(env):
    _, rt, stub = env
    streams = [stub.Generate(build_request("a", max_tokens=30)) for _ in range(4)]
    for s in streams:
        next(s)
    calls = rt.processor.calls
    codes = []
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            _collect(stub.Generate(build_request("b", [b"img"])))
        codes.append(err.value.code())
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2 and rt.processor.calls == calls
    for s in streams:
        s.cancel()
    assert _wait_free(rt)


def test_cancel_mid_stream_aborts_and_frees(env):
    _, rt, stub = env
    stream = stub.Generate(build_request("a", request_id="cx", max_tokens=200))
    next(stream)
    t0 = time.monotonic()
    stream.cancel()
    assert _wait_free(rt, 0.5), f"still reserved after {time.monotonic() - t0:.2f}s"
    assert "cx" in rt.engine.abort_calls


def test_deadline_exceeded_frees_the_request(env):
    _, rt, stub = env
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("a", request_id="slow", max_tokens=500), timeout=0.2))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_free(rt)


def test_abort_rpc_ends_stream_with_abort(env):
    _, rt, stub = env
    stream = stub.Generate(build_request("a", request_id="ab", max_tokens=200))
    next(stream)
    assert stub.Abort(vlm_pb2.AbortRequest(request_id="ab")).found
    _, completes = _collect(stream)
    assert completes[0].complete.finish_reason == vlm_pb2.ABORT
    assert not stub.Abort(vlm_pb2.AbortRequest(request_id="nope")).found


def test_message_over_receive_cap_is_resource_exhausted(env):
    _, _, stub = env
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("x", [b"\0" * (2 << 20)])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_model_info(env):
    _, rt, stub = env
    info = stub.GetModelInfo(vlm_pb2.GetModelInfoRequest())
    assert (info.model_id, info.max_images, info.device) == ("fake", 2, "cpu")
    assert "image/png" in info.accepted_mime_types and dict(info.vit_backend_choices) == {}


def test_model_info_reports_autos_choices_as_they_are_made(env):
    _, rt, stub = env

    class Auto:  # what vit_backends.auto.AutoAttention.choices() gives, growing as shapes arrive
        picks = {}

        def choices(self):
            return dict(self.picks)

    rt.vit_backend = Auto()
    try:
        assert dict(stub.GetModelInfo(vlm_pb2.GetModelInfoRequest()).vit_backend_choices) == {}
        Auto.picks["H=16 D=80 T<=8192 L<=64 S<=128"] = "fa3"
        got = stub.GetModelInfo(vlm_pb2.GetModelInfoRequest()).vit_backend_choices
        assert dict(got) == {"H=16 D=80 T<=8192 L<=64 S<=128": "fa3"}
    finally:
        rt.vit_backend = None


def test_drain_finishes_in_flight_refuses_new(tmp_path):
    rt = fake_runtime(FakeEngine(delay=0.02))
    with running_server(_cfg(tmp_path), load_runtime=lambda cfg: rt) as srv:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(srv.channel())
        stream = stub.Generate(build_request("a", max_tokens=25))
        next(stream)
        drained = {}
        thread = threading.Thread(target=lambda: drained.update(ok=srv.call(srv.server.drain())))
        thread.start()
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as err:
            _collect(stub.Generate(build_request("b")))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        chunks, completes = _collect(stream)
        assert len(completes) == 1 and completes[0].complete.finish_reason == vlm_pb2.LENGTH
        thread.join(10)
        assert drained == {"ok": True}


def test_server_default_deadline_applies_when_client_sets_none(tmp_path):
    rt = fake_runtime(FakeEngine(delay=0.02))
    with running_server(_cfg(tmp_path, default_deadline_s=0.2), load_runtime=lambda cfg: rt) as srv:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(srv.channel())
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            _collect(stub.Generate(build_request("a", max_tokens=500)))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 2.0
        assert _wait_free(rt)
        _, completes = _collect(stub.Generate(build_request("a", max_tokens=2)))  # short ones still pass
        assert len(completes) == 1


def test_health_answers_fast_while_busy(env):
    srv, rt, stub = env
    streams = [stub.Generate(build_request("a", max_tokens=100)) for _ in range(4)]
    for s in streams:
        next(s)
    with srv.channel() as ch:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(ch)
        health.Check(health_pb2.HealthCheckRequest(service=""))  # connect first
        times = []
        for _ in range(5):  # the median, so one slow scheduling slice on a loaded CI machine doesn't decide it
            t0 = time.monotonic()
            status = health.Check(health_pb2.HealthCheckRequest(service="vlm.v1.VisionLanguageService")).status
            times.append(time.monotonic() - t0)
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert sorted(times)[2] < 0.1, times
    for s in streams:
        s.cancel()
    assert _wait_free(rt)
