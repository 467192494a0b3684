"""The HTTP front door over a fake runtime: unsupported fields are 400s naming them, OpenAI error bodies with the
right status, readiness while loading, /metrics on the HTTP port when asked, the logprobs / usage shapes."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from tests.server.http_fakes import http_cfg, http_runtime
from tests.server_harness import _make_server, _run_loop, running_server

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    rt = http_runtime()
    cfg = http_cfg(tmp_path_factory.mktemp("srv"), http={"metrics": True})
    with running_server(cfg, load_runtime=lambda c: rt, warmup=False) as srv:
        with httpx.Client(base_url=srv.server.http.url, timeout=30) as c:
            yield c


def _err(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("extra,param", [
    ({"n": 2}, "n"), ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"audio": {"voice": "alloy"}}, "audio"), ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"functions": []}, "functions"),
    ({"some_future_field": 1}, "some_future_field"),
])
def test_unsupported_fields_are_400_naming_them(http, extra, param):
    err = _err(http.post("/v1/chat/completions", json={"messages": MSG, **extra}), 400)
    assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"


def test_neutral_values_of_unsupported_fields_pass(http):
    body = {"messages": MSG, "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "tools": None, "max_tokens": 1}
    assert http.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"), ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "top_p": 1.5}, "top_p"), ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_completion_tokens": True}, "max_completion_tokens"),
    ({"messages": MSG, "top_logprobs": 3}, "top_logprobs"), ({"messages": MSG, "stop": [1]}, "stop"),
    ({"messages": MSG, "stop": [""]}, "stop[0]"), ({"messages": MSG, "seed": -1}, "seed"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url"),
])
def test_bad_values_are_400_naming_the_field(http, body, param):
    assert _err(http.post("/v1/chat/completions", json=body), 400)["param"] == param


def test_not_json_and_unknown_model_and_route(http):
    assert _err(http.post("/v1/chat/completions", content=b"{nope"), 400)["message"].startswith("the body is not")
    err = _err(http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSG}), 404)
    assert err["param"] == "model" and "gpt-4o" in err["message"]
    _err(http.get("/v1/nothing"), 404)
    _err(http.get("/v1/models/gpt-4o"), 404)
    assert http.get("/v1/models/demo").json()["id"] == "demo"


def test_models_lists_the_served_model(http):
    data = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["demo"] and data[0]["max_model_len"] == 128


def test_usage_and_logprobs_shapes(http):
    body = {"messages": MSG, "max_tokens": 3, "logprobs": True, "top_logprobs": 0}
    out = http.post("/v1/chat/completions", json=body).json()
    assert out["object"] == "chat.completion" and out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "t0 t1 t2 "}
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                            "prompt_tokens_details": {"cached_tokens": 0}}


def test_metrics_on_the_http_port(http):
    http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
    text = http.get("/metrics").text
    assert "vlm:request_success_total" in text and 'finished_reason="length"' in text


def test_readiness_while_loading_then_ready(tmp_path):
    rt, release = http_runtime(), threading.Event()

    def slow_load(cfg):
        release.wait(30)
        return rt

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(_make_server(http_cfg(tmp_path), slow_load), loop).result(10)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    loading = asyncio.run_coroutine_threadsafe(server.load(warmup=False), loop)
    try:
        with httpx.Client(base_url=server.http.url, timeout=10) as c:
            assert c.get("/health").status_code == 200
            ready = c.get("/health/ready")
            assert ready.status_code == 503 and ready.headers["retry-after"] and ready.json()["status"] == "loading"
            resp = c.post("/v1/chat/completions", json={"messages": MSG})
            assert _err(resp, 503)["type"] == "service_unavailable" and resp.headers["retry-after"]
            release.set()
            loading.result(10)
            assert c.get("/ready").status_code == 200
    finally:
        release.set()
        asyncio.run_coroutine_threadsafe(server.drain(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
