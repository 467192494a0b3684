"""The real server with the demo model over mTLS on loopback (and its UDS): tokens, errors, limits, TLS rules."""

from __future__ import annotations

import io
import os
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

from vlm_service import types
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import Client, build_request
from vlm_service.server import convert
from vlm_service.server.pki import LOCAL_NAMES, make_leaf
from tests.server_harness import SERVICE_NAME
from vlm_service.server.tls import channel_credentials


def _png(w=64, h=48, color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stub(server):
    channel = server.channel()
    yield vlm_pb2_grpc.VisionLanguageServiceStub(channel)
    channel.close()


def _collect(stream):
    chunks, completes = [], []
    for resp in stream:
        (chunks if resp.HasField("chunk") else completes).append(resp)
    assert len(completes) == 1, "a successful stream ends with exactly one Complete"
    return [t for c in chunks for t in c.chunk.token_ids], completes[0].complete


def _busy(runtime) -> int:
    """Requests and KV blocks the engine still holds (0 when idle)."""
    s = runtime.engine.stats()
    return s.running + s.waiting + s.reserved + s.tracked_requests


def _wait_idle(runtime, timeout=2.0) -> bool:
    end = time.monotonic() + timeout
    while _busy(runtime) and time.monotonic() < end:
        time.sleep(0.02)
    return _busy(runtime) == 0


def _reference_tokens(runtime, png: bytes, prompt: str, n: int) -> list[int]:
    from tests.models.reference_generate import generate

    msgs = (types.ChatMessage("user", (types.ImageInput(png, "image/png"), prompt)),)
    p = runtime.processor.process(msgs)
    pixels = torch.cat([im.pixel_values for im in p.visuals])
    grid = torch.tensor([im.grid_thw for im in p.visuals])
    return generate(runtime.model, torch.tensor(p.input_ids), p.positions, p.mrope_delta, pixels, grid,
                    max_new_tokens=n)


def test_streamed_tokens_match_the_model_run_directly(server, stub):
    png = _png()
    served, complete = _collect(stub.Generate(build_request("describe", [png], max_tokens=8)))
    reference = _reference_tokens(server.server.runtime, png, "describe", 8)
    assert served == reference[:len(served)] and len(served) >= len(reference) - 1
    assert complete.usage.completion_tokens == len(served) and complete.usage.image_tokens > 0
    assert complete.timings.ttft_ms > 0


def test_min_tokens_equal_max_tokens_gives_exactly_that_many(stub):
    served, complete = _collect(stub.Generate(build_request("x", max_tokens=6, min_tokens=6)))
    assert len(served) == 6 and complete.finish_reason == vlm_pb2.LENGTH


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n\0\0", b"hello, I am text", _png(1, 1)])
def test_bad_image_is_invalid_argument_naming_field_then_next_succeeds(server, stub, data):
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("look", [data])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err.value)) == ["messages[0].content[0].image"]
    _collect(stub.Generate(build_request("look", [_png()], max_tokens=2)))
    assert _wait_idle(server.server.runtime)


def test_duplicate_in_flight_id_then_reuse(stub):
    first = stub.Generate(build_request("a", request_id="dup", max_tokens=200, min_tokens=200))
    next(first)
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("b", request_id="dup")))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    first.cancel()
    time.sleep(0.2)
    _, complete = _collect(stub.Generate(build_request("c", request_id="dup", max_tokens=1)))
    assert complete.finish_reason in (vlm_pb2.LENGTH, vlm_pb2.STOP)


def test_cancel_mid_stream_frees_the_engine(server, stub):
    stream = stub.Generate(build_request("a", [_png()], max_tokens=500, min_tokens=500))
    next(stream)
    stream.cancel()
    assert _wait_idle(server.server.runtime, 0.5)


def test_health_serving_and_reflection(server):
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert server.health("") == health_pb2.HealthCheckResponse.SERVING
    with server.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert SERVICE_NAME in {s.name for s in resp.list_services_response.service}


def test_model_info(stub):
    info = stub.GetModelInfo(vlm_pb2.GetModelInfoRequest())
    assert info.model_id == "demo" and info.device == "cpu" and info.max_images == 2
    assert info.architecture.startswith("Qwen3VL")


def test_mtls_refuses_no_cert_and_other_ca(server, pki):
    pki, _ = pki
    for creds in (channel_credentials(pki.ca.cert),
                  channel_credentials(pki.ca.cert, pki.other_client.cert, pki.other_client.key)):
        with Client(server.target, channel_credentials=creds) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.info(timeout=3.0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rotated_certificate_is_seen_by_a_new_connection(server, pki, tmp_path):
    pki, live = pki
    creds = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
    with pytest.raises(grpc.RpcError):  # the current certificate does not name rotated.test
        with Client(server.target, channel_credentials=creds, server_name="rotated.test") as c:
            c.info(timeout=3.0)
    new = make_leaf(pki.ca, tmp_path / "rotated", "rotated", LOCAL_NAMES + ("rotated.test",))
    os.replace(new.key, live / "server.key")
    os.replace(new.cert, live / "server.crt")
    with Client(server.target, channel_credentials=creds, server_name="rotated.test") as c:
        assert c.info(timeout=3.0).model_id == "demo"


def test_uds_listener_serves(server):
    """With TLS files given, the socket serves (m)TLS too; plaintext UDS is covered in tests/server/test_tls.py."""
    uds = next(t for t in server.server.targets if t.startswith("unix:"))
    with Client(uds, channel_credentials=server.credentials) as client:
        text, complete = client.generate_text("hi", max_tokens=3)
    assert complete.usage.completion_tokens >= 1


def test_message_over_cap_is_resource_exhausted(stub):
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("x", [os.urandom(9 << 20)])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_prompt_over_the_limit_is_invalid_argument(server, stub):
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub.Generate(build_request("word " * 1000, max_tokens=2)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert convert.field_violations(rpc_status.from_call(err.value)) == ["messages"]
    assert _wait_idle(server.server.runtime)


def test_admission_refuses_the_excess(tmp_path_factory, state_dir):
    """A separate server with max_waiting_requests=1 and one running slot: extra requests get RESOURCE_EXHAUSTED."""
    from tests.e2e.conftest import e2e_config
    from vlm_service.config import TLSConfig
    from tests.server_harness import running_server

    cfg = e2e_config(state_dir, TLSConfig(insecure=True), max_waiting_requests=1)
    with running_server(cfg, warmup=False) as srv, srv.channel() as ch:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
        streams = [stub.Generate(build_request(f"r{i}", max_tokens=300, min_tokens=300)) for i in range(6)]
        codes = []
        for s in streams:
            try:
                _collect(s)
                codes.append("ok")
            except grpc.RpcError as e:
                codes.append(e.code())
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
        assert set(codes) <= {"ok", grpc.StatusCode.RESOURCE_EXHAUSTED}



@pytest.mark.parametrize("side, misses", [(0, 0), (300, 2)])
def test_warmup_runs_two_distinct_images_through_the_vision_tower(state_dir, side, misses):
    import dataclasses

    from tests.e2e.conftest import e2e_config
    from vlm_service.config import TLSConfig
    from tests.server_harness import running_server

    cfg = e2e_config(state_dir, TLSConfig(insecure=True))
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, warmup_image_side=side),
                              model=dataclasses.replace(cfg.model, vit_attention_backend="auto"))
    with running_server(cfg) as srv, srv.channel() as ch:
        stats = srv.server.runtime.engine.stats()
        assert stats.vision_cache_misses == misses and stats.vision_cache_hits == 0
        # GetModelInfo shows auto's picks for the shapes the warm-up encoded (sdpa: the only choice on CPU)
        info = vlm_pb2_grpc.VisionLanguageServiceStub(ch).GetModelInfo(vlm_pb2.GetModelInfoRequest())
        assert info.vit_attention_backend == "auto"
        assert set(info.vit_backend_choices.values()) == ({"sdpa"} if side else set())
