"""Helpers of the HTTP variants of the reliability tests: OpenAI chat bodies with data-URL images, SSE parsing."""

from __future__ import annotations

import base64
import json

import httpx


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_body(text: str, images=(), stream: bool = False, **fields) -> dict:
    """One user turn: images (bytes, or (bytes, mime)) first, then the text."""
    parts = []
    for im in images:
        data, mime = im if isinstance(im, tuple) else (im, "image/png")
        parts.append({"type": "image_url", "image_url": {"url": data_url(data, mime)}})
    parts.append({"type": "text", "text": text})
    body = {"messages": [{"role": "user", "content": parts}], "stream": stream, **fields}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def client(srv, **kwargs) -> httpx.Client:
    kwargs.setdefault("timeout", 60.0)
    return httpx.Client(base_url=srv.server.http.url, **kwargs)


def events(resp: httpx.Response):
    """The SSE `data:` payloads of a streamed response, parsed (the final "[DONE]" as the string). Hold on to the
    generator while the stream should go on: once dropped, httpx closes the response (the client disconnects)."""
    for line in resp.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            yield payload if payload == "[DONE]" else json.loads(payload)


def stream_chat(http: httpx.Client, body: dict, headers=None) -> tuple[str, list]:
    """(the joined content, every event) of a streamed chat; asserts the stream contract on the way: one finish
    chunk, the usage chunk after it, [DONE] last and only once."""
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status_code == 200, resp.read()
        got = list(events(resp))
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    finishes = [e for e in got[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finishes) == 1, "a successful stream has exactly one finish_reason"
    assert got[-2]["usage"] is not None and got[-2]["choices"] == []
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in got[:-1] if e["choices"])
    return text, got


def error_of(resp: httpx.Response) -> dict:
    """The OpenAI-style error object of a refused request."""
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]
