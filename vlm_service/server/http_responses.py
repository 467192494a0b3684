"""Internal types -> OpenAI chat-completions JSON: completions, stream chunks, usage, logprobs, error bodies.

With http_convert.py (requests), the only place where HTTP bodies and vlm_service.types meet.
"""

from __future__ import annotations

import json
import re
import time

from vlm_service import errors, types

_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
           "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 409: "conflict_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout_error"}
_FINISH = {types.FinishReason.STOP: "stop", types.FinishReason.STOP_SEQUENCE: "stop",
           types.FinishReason.LENGTH: "length", types.FinishReason.ABORT: "abort"}


# --- errors --------------------------------------------------------------------------------------------------------

_PART_KIND = re.compile(r"(\.content\[\d+\]\.)(image|video)(?=\.|$)")


def http_field(name: str | None) -> str | None:
    """An internal field name as the HTTP client knows it: sampling.top_p -> top_p, ...content[1].image ->
    ...content[1].image_url, ...content[0].video.fps -> ...content[0].video_url.fps."""
    if not name:
        return None
    return _PART_KIND.sub(r"\1\2_url", name.removeprefix("sampling."))


def http_status(exc: errors.ServiceError) -> int:
    if isinstance(exc, errors.TooLarge):
        return 413
    return _STATUS.get(exc.code, 500)


def error_body(exc: errors.ServiceError) -> tuple[int, dict]:
    """(status, OpenAI-style error object); a 500 never carries internals."""
    status = http_status(exc)
    param = http_field(exc.field)
    message = str(exc) if status != 500 else "internal error"
    if exc.field and param and message.startswith(exc.field):
        message = param + message[len(exc.field):]
    elif param and status != 500 and not message.startswith(param):  # the message names the field too
        message = f"{param}: {message}"
    return status, {"error": {"message": message, "type": _TYPES.get(status, "internal_error"), "param": param,
                              "code": exc.code.lower()}}


# --- responses -----------------------------------------------------------------------------------------------------

def usage_json(u: types.Usage) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def logprobs_json(lps, token_text) -> list[dict]:
    """OpenAI logprobs.content entries; token_text(id) -> the token's text."""
    def entry(token_id: int, logprob: float) -> dict:
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps]


class ResponseShape:
    """The fixed parts of one request's response objects: id, created, model name, how tokens print."""

    def __init__(self, request_id: str, model: str, token_text, logprobs: bool):
        self.id, self.model, self.created = f"chatcmpl-{request_id}", model, int(time.time())
        self._token_text, self._logprobs = token_text, logprobs

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _lp(self, lps):
        return {"content": logprobs_json(lps, self._token_text)} if self._logprobs else None

    def chunk(self, delta: dict, lps=(), finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": self._lp(lps), "finish_reason": finish}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def delta_chunk(self, out: types.TokenDelta) -> dict:
        return self.chunk({"content": out.text}, out.logprobs)

    def final_chunk(self, fin: types.Finished) -> dict:
        return self.chunk({}, (), _FINISH[fin.finish_reason])

    def usage_chunk(self, fin: types.Finished) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_json(fin.usage)}

    def completion(self, deltas: list[types.TokenDelta], fin: types.Finished) -> dict:
        text = "".join(d.text for d in deltas)
        lps = [lp for d in deltas for lp in d.logprobs]
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": self._lp(lps),
                  "finish_reason": _FINISH[fin.finish_reason]}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage_json(fin.usage)}


def sse(obj) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
