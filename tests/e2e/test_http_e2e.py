"""The OpenAI-compatible front door end to end: the official `openai` client against the real server (demo model)
on loopback with real TLS (certificates made here), beside the gRPC API of the same process and engine."""

from __future__ import annotations

import base64
import dataclasses
import io
import random
import ssl

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import _require_runtime, e2e_config
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.config import HTTPConfig, TLSConfig
from tests.server_harness import running_server
from vlm_service.server.tls import channel_credentials

openai = pytest.importorskip("openai")
NAME = "qwen-demo"


def _png(seed: int, w: int = 48, h: int = 40) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3)).save(buf, "PNG")
    return buf.getvalue()


def _messages(text: str, image: bytes | None = None) -> list:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        parts.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def srv(state_dir, pki):
    _require_runtime()
    pki, live = pki
    cfg = e2e_config(state_dir, TLSConfig(cert=live / "server.crt", key=live / "server.key"))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, served_model_name=NAME),
                              server=dataclasses.replace(cfg.server, http=HTTPConfig(port=0)))
    with running_server(cfg, credentials=channel_credentials(pki.ca.cert)) as running:
        running.extra["ca"] = pki.ca.cert
        yield running


@pytest.fixture(scope="module")
def client(srv):
    assert srv.server.http.url.startswith("https://")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(srv.extra["ca"]))) as http:
        yield openai.OpenAI(base_url=srv.server.http.url + "/v1", api_key="unused", http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def stub(srv):
    channel = srv.channel()
    yield vlm_pb2_grpc.VisionLanguageServiceStub(channel)
    channel.close()


def _chat(client, messages, **kw):
    return client.chat.completions.create(model=NAME, messages=messages, **kw)


def _streamed(client, messages, **kw) -> tuple[str, list]:
    chunks = list(_chat(client, messages, stream=True, stream_options={"include_usage": True}, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_non_streamed_chat_with_an_image(client):
    out = _chat(client, _messages("describe it", _png(1)), max_tokens=5, extra_body={"min_tokens": 5})
    assert out.model == NAME and out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    assert out.choices[0].finish_reason == "length" and isinstance(out.choices[0].message.content, str)
    assert out.usage.completion_tokens == 5 and out.usage.total_tokens == out.usage.prompt_tokens + 5
    assert out.usage.prompt_tokens > 10  # the image's tokens are in the prompt


def test_streamed_chat_matches_the_non_streamed_one(client):
    messages = _messages("what is here?", _png(2))
    text, chunks = _streamed(client, messages, max_tokens=8, extra_body={"min_tokens": 8})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert text == _chat(client, messages, max_tokens=8, extra_body={"min_tokens": 8}).choices[0].message.content


def test_a_repeated_prompt_reports_cached_tokens(client):
    messages = _messages("a long question about this picture " * 6, _png(3))
    first = _chat(client, messages, max_tokens=1).usage
    second = _chat(client, messages, max_tokens=1).usage
    assert second.prompt_tokens_details.cached_tokens >= 16  # at least one full KV block came from the cache
    assert second.prompt_tokens_details.cached_tokens > first.prompt_tokens_details.cached_tokens
    assert second.prompt_tokens == first.prompt_tokens


def test_logprobs(client):
    out = _chat(client, _messages("hi", _png(4)), max_tokens=6, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 6
    for entry in content:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs), abs=1e-5)


def test_same_greedy_tokens_as_grpc(srv, client, stub):
    image = _png(5)
    grpc_out = list(stub.Generate(build_request("compare us", [image], max_tokens=10, logprobs=True)))
    ids = [t for r in grpc_out if r.HasField("chunk") for t in r.chunk.token_ids]
    grpc_lps = [lp.logprob for r in grpc_out if r.HasField("chunk") for lp in r.chunk.logprobs]
    out = _chat(client, _messages("compare us", image), max_tokens=10, logprobs=True)
    tok = srv.server.runtime.tokenizer
    assert [e.token for e in out.choices[0].logprobs.content] == [tok.decode([i]) for i in ids]
    assert [e.logprob for e in out.choices[0].logprobs.content] == pytest.approx(grpc_lps, abs=1e-5)
    assert out.choices[0].message.content == "".join(r.chunk.text for r in grpc_out if r.HasField("chunk"))


def test_stop_string(client):
    messages = _messages("go on", _png(6))
    text = _chat(client, messages, max_tokens=16, extra_body={"min_tokens": 16}).choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {text!r}"
    out = _chat(client, messages, max_tokens=16, stop=[stop])
    assert out.choices[0].finish_reason == "stop" and out.choices[0].message.content == text[: text.index(stop)]


def test_seeded_sampling_is_reproducible_and_matches_grpc(client, stub):
    messages = _messages("surprise me", _png(7))
    runs = [_chat(client, messages, temperature=1.0, seed=s, max_tokens=12, extra_body={"min_tokens": 12})
            .choices[0].message.content for s in (11, 11, 12, 13, 14)]
    assert runs[0] == runs[1]
    assert len(set(runs[1:])) >= 2, "other seeds should draw other tokens"
    grpc_text = "".join(r.chunk.text for r in stub.Generate(build_request(
        "surprise me", [_png(7)], temperature=1.0, seed=11, max_tokens=12, min_tokens=12)) if r.HasField("chunk"))
    assert grpc_text == runs[0]


def test_bad_image_is_400_naming_the_field(client):
    bad = [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, bad, max_tokens=1)
    assert err.value.status_code == 400
    assert err.value.body["param"] == "messages[0].content[1].image_url"
    assert _chat(client, _messages("fine"), max_tokens=1).usage.completion_tokens == 1


@pytest.mark.parametrize("kw,param", [({"n": 2}, "n"), ({"response_format": {"type": "json_object"}},
                                                        "response_format"),
                                      ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")])
def test_unsupported_fields_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, _messages("x"), max_tokens=1, **kw)
    assert err.value.body["param"] == param and "not supported" in err.value.body["message"]


def test_served_model_name_on_both_transports(client, stub):
    assert [m.id for m in client.models.list()] == [NAME]
    assert stub.GetModelInfo(vlm_pb2.GetModelInfoRequest()).model_id == NAME
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=_messages("x"), max_tokens=1)


def _video_chat(text: str, clip: bytes, **spec) -> list:
    url = "data:video/mp4;base64," + base64.b64encode(clip).decode()
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url, **spec}},
                                         {"type": "text", "text": text}]}]


def test_a_video_gets_the_same_greedy_tokens_as_grpc(srv, client, stub):
    pytest.importorskip("av")
    from vlm_service.bench.clips import make_clip

    clip = make_clip(seconds=5.0, width=66, height=50, fps=8.0, seed=3)  # 10 frames at fps 2, 5 at fps 1
    grpc_out = list(stub.Generate(build_request("what happens", videos=[(clip, "video/mp4", 2.0)], max_tokens=10,
                                                min_tokens=10, logprobs=True)))
    ids = [t for r in grpc_out if r.HasField("chunk") for t in r.chunk.token_ids]
    out = _chat(client, _video_chat("what happens", clip, fps=2.0), max_tokens=10, logprobs=True,
                extra_body={"min_tokens": 10})
    tok = srv.server.runtime.tokenizer
    assert [e.token for e in out.choices[0].logprobs.content] == [tok.decode([i]) for i in ids]
    assert out.usage.prompt_tokens == next(r.complete.usage.prompt_tokens for r in grpc_out if r.HasField("complete"))
    fewer = _chat(client, _video_chat("what happens", clip, fps=1.0), max_tokens=1).usage.prompt_tokens
    assert fewer < out.usage.prompt_tokens  # the part's fps reached the sampler: fewer frames, fewer tokens


@pytest.mark.parametrize("spec,param", [({}, "messages[0].content[0].video_url"),
                                        ({"fps": -2}, "messages[0].content[0].video_url.fps")])
def test_a_bad_video_is_400_naming_the_field(client, spec, param):
    pytest.importorskip("av")
    clip = b"not a video, only some bytes" * 10 if not spec else _png(2)
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, _video_chat("x", clip, **spec), max_tokens=1)
    assert err.value.status_code == 400 and err.value.body["param"] == param
    assert _chat(client, _messages("still serving"), max_tokens=1).usage.completion_tokens == 1
