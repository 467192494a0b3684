"""4, 6, 7, 8 over HTTP: malformed images, limits, duplicate in-flight ids and the stream contract, against the shared
server's OpenAI-compatible front door. Each refusal is an OpenAI error body naming the field; the next request
succeeds."""

from __future__ import annotations

import os

import pytest

from http_helpers import chat_body, client, error_of, events, stream_chat
from reliability_helpers import CONTEXT, MAX_IMAGES, RECEIVE_CAP, png, wait_idle
from test_04_malformed_images import _GOOD, CASES


@pytest.fixture(scope="module")
def http(server):
    with client(server) as c:
        yield c


def _ok(http, body) -> dict:
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_image_is_400_naming_the_field_then_next_succeeds(server, http, case):
    data, mime = CASES[case]
    body = chat_body("look", [(_GOOD, "image/png"), (data, mime or "image/png")], max_tokens=2)
    if not mime:  # no declared type: sent as a data URL without one
        body["messages"][0]["content"][1]["image_url"]["url"] = "data:;base64," + \
            body["messages"][0]["content"][1]["image_url"]["url"].split(",", 1)[1]
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert err["param"] == "messages[0].content[1].image_url" and err["param"] in err["message"]
    assert err["type"] == "invalid_request_error"
    assert _ok(http, chat_body("again", [png(24, 24, seed=107)], max_tokens=2))["usage"]["completion_tokens"] >= 1
    assert wait_idle(server.server.runtime) is not None


def test_bad_base64_names_the_field(http):
    body = chat_body("look", max_tokens=1)
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}})
    err = error_of(http.post("/v1/chat/completions", json=body))
    assert err["param"] == "messages[0].content[0].image_url" and "base64" in err["message"]


def test_body_over_the_cap_is_413_then_next_succeeds(http):
    resp = http.post("/v1/chat/completions", json=chat_body("x", [os.urandom(RECEIVE_CAP)], max_tokens=1))
    assert resp.status_code == 413 and "cap" in error_of(resp)["message"]
    assert _ok(http, chat_body("fine", max_tokens=1))["choices"][0]["message"]["content"] is not None


def test_too_many_images_is_400(http):
    images = [png(16, 16, seed=160 + i) for i in range(MAX_IMAGES + 1)]
    err = error_of(http.post("/v1/chat/completions", json=chat_body("many", images, max_tokens=1)))
    assert err["param"] == "messages"
    assert _ok(http, chat_body("ok", images[:MAX_IMAGES], max_tokens=1))


def test_prompt_over_context_is_400(server, http):
    resp = http.post("/v1/chat/completions", json=chat_body("word " * (CONTEXT + 10), max_tokens=1))
    assert resp.status_code == 400 and error_of(resp)["param"] == "messages"
    assert wait_idle(server.server.runtime) is not None


def test_duplicate_in_flight_request_id_is_409_then_reuse_works(server, http):
    headers = {"X-Request-Id": "http-dup"}
    body = chat_body("a", stream=True, max_tokens=900, min_tokens=900)
    with client(server) as other:
        with other.stream("POST", "/v1/chat/completions", json=body, headers=headers) as first:
            assert first.status_code == 200 and first.headers["x-request-id"] == "http-dup"
            stream = events(first)
            next(stream)  # in flight now
            resp = http.post("/v1/chat/completions", json=chat_body("b", max_tokens=1), headers=headers)
            assert resp.status_code == 409 and error_of(resp)["param"] == "request_id"
            assert next(stream)["choices"], "the first request is not disturbed"
    assert wait_idle(server.server.runtime) is not None
    again = http.post("/v1/chat/completions", json=chat_body("c", max_tokens=1), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == "chatcmpl-http-dup"


@pytest.mark.parametrize("n", [1, 7])
def test_stream_contract_min_tokens_equal_max_tokens(http, n):
    text, got = stream_chat(http, chat_body("count", [png(seed=170)], stream=True, max_tokens=n, min_tokens=n))
    assert got[-2]["usage"]["completion_tokens"] == n
    finish = [e["choices"][0]["finish_reason"] for e in got[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finish == ["length"]
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({e["id"] for e in got[:-1]}) == 1


def test_streamed_and_unstreamed_greedy_agree(http):
    body = chat_body("same", [png(seed=171)], max_tokens=6, min_tokens=6)
    text, _ = stream_chat(http, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert _ok(http, body)["choices"][0]["message"]["content"] == text
