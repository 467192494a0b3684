"""API keys on both transports (fake runtime, real server on loopback): `Authorization: Bearer` on HTTP and
`authorization` metadata on gRPC, UNAUTHENTICATED / 401 otherwise, health open on both; the key's name is the
request's identity, so one key cannot abort another key's request."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from tests.server.http_fakes import http_cfg, http_runtime
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.server.auth import ApiKeys
from tests.server_harness import running_server

ALICE, BOB = "sk-alice-0123", "sk-bob-4567"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    keys_file = folder / "keys.txt"
    keys_file.write_text(f"# name key\nbob {BOB}\n")
    rt = http_runtime()
    cfg = http_cfg(folder, api_keys=(f"alice:{ALICE}",), api_keys_file=keys_file)
    with running_server(cfg, load_runtime=lambda c: rt) as srv:
        channel = srv.channel()
        with httpx.Client(base_url=srv.server.http.url, timeout=30) as http:
            yield srv, vlm_pb2_grpc.VisionLanguageServiceStub(channel), http
        channel.close()


def _md(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {ALICE}", "Bearer", ALICE])
def test_http_without_a_valid_key_is_401(env, header):
    _, _, http = env
    resp = http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": header} if header else {})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert http.get("/v1/models", headers={"Authorization": header} if header else {}).status_code == 401


@pytest.mark.parametrize("key", [ALICE, BOB])
def test_http_with_a_key_from_flag_or_file_works(env, key):
    _, _, http = env
    resp = http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2


def test_http_health_needs_no_key(env):
    _, _, http = env
    assert http.get("/health").status_code == 200 and http.get("/health/ready").status_code == 200


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer nope"),), (("authorization", ALICE),)])
def test_grpc_without_a_valid_key_is_unauthenticated(env, metadata):
    _, stub, _ = env
    for call in (lambda: list(stub.Generate(build_request("x", max_tokens=1), metadata=metadata)),
                 lambda: stub.GetModelInfo(vlm_pb2.GetModelInfoRequest(), metadata=metadata),
                 lambda: stub.Abort(vlm_pb2.AbortRequest(request_id="x"), metadata=metadata)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_with_a_key_works_and_health_is_open(env):
    srv, stub, _ = env
    responses = list(stub.Generate(build_request("x", max_tokens=3), metadata=_md(BOB)))
    assert responses[-1].HasField("complete") and responses[-1].complete.usage.completion_tokens == 3
    assert srv.health() == health_pb2.HealthCheckResponse.SERVING  # no metadata at all


def test_only_the_owner_can_abort_across_transports(env):
    _, stub, http = env
    stream = stub.Generate(build_request("a", request_id="own-grpc", max_tokens=300), metadata=_md(ALICE))
    next(stream)
    assert not stub.Abort(vlm_pb2.AbortRequest(request_id="own-grpc"), metadata=_md(BOB)).found
    assert stub.Abort(vlm_pb2.AbortRequest(request_id="own-grpc"), metadata=_md(ALICE)).found
    assert list(stream)[-1].complete.finish_reason == vlm_pb2.ABORT
    body = {**CHAT, "max_tokens": 300, "stream": True}
    headers = {"Authorization": f"Bearer {BOB}", "X-Request-Id": "own-http"}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        lines = resp.iter_lines()
        next(lines)
        assert not stub.Abort(vlm_pb2.AbortRequest(request_id="own-http"), metadata=_md(ALICE)).found
        assert stub.Abort(vlm_pb2.AbortRequest(request_id="own-http"), metadata=_md(BOB)).found
        assert '"finish_reason":"abort"' in "".join(lines)


def test_key_names():
    keys = ApiKeys.from_config(["alice:k1", "k2"], None)
    assert keys.identify("Bearer k1") == "alice"
    assert keys.identify("bearer k2").startswith("key-") and keys.identify("Bearer k2") != "alice"
    assert ApiKeys.from_config([], None) is None
