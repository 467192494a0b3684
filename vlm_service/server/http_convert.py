"""OpenAI chat-completions request JSON -> internal types (responses and errors: http_responses.py).

Requests are parsed from the raw JSON (not a permissive model): a field this server does not implement (n > 1, tools,
response_format, audio, ...) is a 400 naming it, never silently ignored. Sampling values are converted as sent and
checked once, by the pipeline (engine.validate_sampling); the error's field is renamed to the HTTP name here.
Images and videos (`image_url`, `video_url`): `data:` URLs are decoded here (long payloads straight from the body's
bytes, see http_payloads.py); http(s) and file:// URLs become `UrlMedia` that server/http_media.py fetches.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field

from vlm_service import errors, types
from vlm_service.server.http_payloads import LiftedPayloads, lift_payloads

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# what a request may carry: everything else is refused by name
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "max_completion_tokens", "stop",
             "logprobs", "top_logprobs", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids")
_ACCEPTED = {"model", "messages", "stream", "stream_options", "user", *_SAMPLING}
_NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "parallel_tool_calls": None}  # default values pass
_MESSAGE_KEYS = {"role", "content", "name"}


@dataclass(frozen=True)
class UrlMedia:
    """An image or video to fetch (http(s) or file://) before the request can be built; `field` names it for errors;
    fps / max_frames: a video's sampling as the request asked."""

    url: str
    field: str
    kind: str = "image"  # image | video
    fps: float | None = None
    max_frames: int | None = None


@dataclass
class ChatCall:
    """A parsed chat-completions body. `messages` may still hold UrlMedia (http_media.resolve replaces them)."""

    messages: list[list]  # per message: [role, [parts: str | ImageInput | VideoInput | UrlMedia]]
    sampling: types.SamplingParams
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    urls: list[UrlMedia] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(isinstance(p, types.ImageInput) or isinstance(p, UrlMedia) and p.kind == "image"
                   for _, parts in self.messages for p in parts)

    def build(self, request_id: str, arrival: float) -> types.Request:
        """The internal Request (every URL resolved by now)."""
        msgs = tuple(types.ChatMessage(role=r, content=tuple(parts)) for r, parts in self.messages)
        return types.Request(request_id=request_id, messages=msgs, sampling=self.sampling, arrival_time=arrival)


def _bad(field_name: str, message: str) -> errors.InvalidInput:
    return errors.InvalidInput(f"{field_name}: {message}", field=field_name)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_loads():
    """orjson when installed (the http extra): a 1024² PNG is ~4 MB of base64 in the body, and json.loads takes
    several ms over it (and more on bytes: its encoding detection decodes with surrogatepass, 3x slower)."""
    try:
        import orjson

        return orjson.loads
    except ImportError:
        return lambda raw: json.loads(raw.decode("utf-8"))


def _b64decode():
    """pybase64 when installed (SIMD: ~0.3 ms for a 1024² PNG against 10-30 ms for binascii), strict either way."""
    try:
        import pybase64

        return lambda text: pybase64.b64decode(text, validate=True)
    except ImportError:
        return lambda text: binascii.a2b_base64(text, strict_mode=True)


_LOADS, _B64DECODE = _json_loads(), _b64decode()


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body (400 when it is not one)."""
    try:
        body = _LOADS(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidInput(f"the body is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise errors.InvalidInput("the body must be a JSON object")
    return body


def chat_from_raw(raw: bytes | bytearray) -> ChatCall:
    """chat_from_body(parse_body(raw)), with long data-URL payloads decoded from the raw bytes (http_payloads.py).
    Whenever the lifted parse is not exactly the plain one (a key left unused, any error), the plain one is used."""
    slim, lifted = lift_payloads(raw)
    if lifted.payloads:
        try:
            call = chat_from_body(parse_body(slim), lifted)
        except errors.ServiceError:
            call = None  # the plain parse gives the error, quoting what was sent
        if call is not None and lifted.all_used:
            return call
    return chat_from_body(parse_body(raw))


def _refuse_unsupported(body: dict) -> None:
    for key, value in body.items():
        if key in _ACCEPTED or value is None or (key in _NEUTRAL and value == _NEUTRAL[key]):
            continue
        if key == "n":
            raise _bad("n", f"n={_short(value)} is not supported (one choice per request: n=1)")
        raise _bad(key, "is not supported by this server")


# --- typed getters -------------------------------------------------------------------------------------------------

def _get(body: dict, name: str, kinds: tuple, what: str):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise _bad(name, f"must be {what}, not {_short(value)}")
    return value


def _number(body, name):
    value = _get(body, name, (int, float), "a number")
    return None if value is None else float(value)


def _int(body, name):
    return _get(body, name, (int,), "an integer")


def _flag(body, name) -> bool:
    return bool(_get(body, name, (bool,), "true or false"))


def _stop(body) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "must be a string or a list of strings")
    return tuple(stop)


def _token_ids(body) -> tuple[int, ...]:
    ids = body.get("stop_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise _bad("stop_token_ids", "must be a list of integers")
    return tuple(ids)


def sampling_from_body(body: dict) -> types.SamplingParams:
    """SamplingParams as sent (unset = defaults); the values are checked by the pipeline."""
    d = types.SamplingParams()
    max_tokens = _int(body, "max_completion_tokens")
    max_tokens = _int(body, "max_tokens") if max_tokens is None else max_tokens
    top_logprobs = _int(body, "top_logprobs") or 0
    logprobs = _flag(body, "logprobs")
    if top_logprobs and not logprobs:
        raise _bad("top_logprobs", "needs logprobs: true")

    def opt(value, default):
        return default if value is None else value

    return types.SamplingParams(
        temperature=opt(_number(body, "temperature"), d.temperature), top_p=opt(_number(body, "top_p"), d.top_p),
        top_k=opt(_int(body, "top_k"), d.top_k), min_p=opt(_number(body, "min_p"), d.min_p), seed=_int(body, "seed"),
        max_tokens=max_tokens, min_tokens=opt(_int(body, "min_tokens"), 0), stop=_stop(body),
        stop_token_ids=_token_ids(body), ignore_eos=_flag(body, "ignore_eos"),
        repetition_penalty=opt(_number(body, "repetition_penalty"), d.repetition_penalty), logprobs=logprobs,
        top_logprobs=top_logprobs)


# --- messages ------------------------------------------------------------------------------------------------------

def _data_url(url: str, field_name: str, lifted: LiftedPayloads | None) -> tuple[bytes, str]:
    """`data:<mime>;base64,<payload>` -> (bytes, mime type); the payload may be a key of `lifted`."""
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise _bad(field_name, "a data URL must look like data:<mime type>;base64,<payload>")
    mime = head[len("data:"):-len(";base64")].strip().lower()
    raw = lifted.take(payload) if lifted is not None else None
    try:
        return _B64DECODE(payload if raw is None else raw), mime
    except (binascii.Error, ValueError, TypeError):
        raise _bad(field_name, "the data URL's payload is not valid base64") from None


def image_from_data_url(url: str, field_name: str, lifted: LiftedPayloads | None = None) -> types.ImageInput:
    """`data:<mime>;base64,<payload>` -> ImageInput (decode errors name the field)."""
    data, mime = _data_url(url, field_name, lifted)
    return types.ImageInput(data=data, mime_type=mime)


def _url_of(part: dict, key: str, field_name: str):
    spec = part.get(key)
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise _bad(field_name, "needs a url (a data: URL, or http(s)/file:// where the server allows them)")
    if not url.startswith("data:") and url.split(":", 1)[0].lower() not in ("http", "https", "file"):
        raise _bad(field_name, f"unsupported URL scheme in {_short(url[:30])}")
    return url, spec if isinstance(spec, dict) else {}


def _image_part(part: dict, field_name: str, lifted: LiftedPayloads | None):
    field_name += ".image_url"
    url, _ = _url_of(part, "image_url", field_name)
    return image_from_data_url(url, field_name, lifted) if url.startswith("data:") else UrlMedia(url, field_name)


def _video_part(part: dict, field_name: str, lifted: LiftedPayloads | None):
    """`{"type": "video_url", "video_url": {"url": ..., "fps": 2.0, "max_frames": 32}}` (fps and max_frames: this
    server's optional sampling fields, capped by the server as on gRPC) -> VideoInput or UrlMedia."""
    field_name += ".video_url"
    url, spec = _url_of(part, "video_url", field_name)
    fps = _positive(spec, "fps", (int, float), "a positive number", field_name)
    max_frames = _positive(spec, "max_frames", (int,), "a positive integer", field_name)
    if not url.startswith("data:"):
        return UrlMedia(url, field_name, "video", fps, max_frames)
    data, mime = _data_url(url, field_name, lifted)
    return types.VideoInput(data=data, mime_type=mime, fps=fps, max_frames=max_frames)


def _positive(spec: dict, key: str, kinds: tuple, what: str, field_name: str):
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise _bad(f"{field_name}.{key}", f"must be {what}, not {_short(value)}")
    return float(value) if float in kinds else value


def _part(part, field_name: str, lifted: LiftedPayloads | None):
    if not isinstance(part, dict):
        raise _bad(field_name, "a content part must be an object with a type")
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind == "image_url":
        return _image_part(part, field_name, lifted)
    if kind == "video_url":
        return _video_part(part, field_name, lifted)
    if kind == "text":
        raise _bad(field_name + ".text", "must be a string")
    raise _bad(field_name + ".type",
               f"content parts of type {_short(kind)} are not supported (text, image_url, video_url)")


def _message(msg, i: int, lifted: LiftedPayloads | None) -> list:
    name = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise _bad(name, "must be an object with role and content")
    extra = sorted(set(msg) - _MESSAGE_KEYS)
    if extra:
        raise _bad(f"{name}.{extra[0]}", "is not supported by this server")
    role = ROLES.get(msg.get("role"))
    if role is None:
        raise _bad(f"{name}.role", f"must be one of {', '.join(ROLES)}, not {_short(msg.get('role'))}")
    content = msg.get("content")
    if isinstance(content, str):
        return [role, [content]]
    if not isinstance(content, list):
        raise _bad(f"{name}.content", "must be a string or a list of content parts")
    return [role, [_part(p, f"{name}.content[{j}]", lifted) for j, p in enumerate(content)]]


def chat_from_body(body: dict, lifted: LiftedPayloads | None = None) -> ChatCall:
    """A parsed, type-checked chat-completions request (errors.InvalidInput naming the field). lifted: the payloads
    lift_payloads took out of the body the dict was parsed from (chat_from_raw)."""
    _refuse_unsupported(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "at least one message is needed")
    messages = [_message(m, i, lifted) for i, m in enumerate(msgs)]
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
        raise _bad("stream_options", "only include_usage is supported")
    model = _get(body, "model", (str,), "a string")
    call = ChatCall(messages, sampling_from_body(body), model, _flag(body, "stream"),
                    bool(options.get("include_usage")))
    call.urls = [p for _, parts in messages for p in parts if isinstance(p, UrlMedia)]
    return call
