"""The ranges the batched step accepts for every value a request contributes to it (sampling parameters).

A value outside these ranges does not just give one request odd output: it can make the whole step raise (a
temperature that is a float32 subnormal turns logits / temperature into inf and the softmax into nan; a stop token id
>= the vocab size indexes past the logits while min_tokens bans it), so they are refused before the request joins a
batch. Errors are InvalidInput naming the field (sampling.temperature) and quoting at most a short value.
"""

from __future__ import annotations

import math

from vlm_service.errors import InvalidInput
from vlm_service.types import SamplingParams

# temperature: 0 = greedy; a positive one below this overflows float32 in logits / temperature (|logit| ~ 1e2 at
# most for real checkpoints: 1e2 / 1e-5 = 1e7, far from float32's 3.4e38) or is a subnormal outright
MIN_TEMPERATURE = 1e-5
# repetition penalty: logit / p or logit * p must stay finite and keep its order of magnitude meaningful
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 1e-2, 1e2
INT32_MAX = 2 ** 31 - 1
UINT64_MAX = 2 ** 64 - 1
MAX_TOP_LOGPROBS = 20
MAX_STOP_TOKEN_IDS = 256  # banned each step while min_tokens lasts: a per-step cost, so bounded
_QUOTE = 24  # characters of a refused value quoted back


def _quote(value) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def _refuse(name: str, why: str, value) -> InvalidInput:
    field = f"sampling.{name}"
    return InvalidInput(f"{field} {why}, got {_quote(value)}", field=field)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _refuse(name, "must be a finite number", value)
    return value


def _int_in(name: str, value, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise _refuse(name, f"must be an integer in [{lo}, {hi}]", value)


def _check_floats(p: SamplingParams) -> None:
    t = _number("temperature", p.temperature)
    if t != 0 and not MIN_TEMPERATURE <= t:
        raise _refuse("temperature", f"must be 0 (greedy) or >= {MIN_TEMPERATURE:g}", t)
    if not 0 < _number("top_p", p.top_p) <= 1:
        raise _refuse("top_p", "must be in (0, 1]", p.top_p)
    if not 0 <= _number("min_p", p.min_p) <= 1:
        raise _refuse("min_p", "must be in [0, 1]", p.min_p)
    if not MIN_REPETITION_PENALTY <= _number("repetition_penalty", p.repetition_penalty) <= MAX_REPETITION_PENALTY:
        raise _refuse("repetition_penalty", f"must be in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}]",
                      p.repetition_penalty)


def _check_ints(p: SamplingParams) -> None:
    _int_in("top_k", p.top_k, 0, INT32_MAX)  # above the vocab size = off
    _int_in("top_logprobs", p.top_logprobs, 0, MAX_TOP_LOGPROBS)
    _int_in("min_tokens", p.min_tokens, 0, INT32_MAX)
    if p.seed is not None:
        _int_in("seed", p.seed, 0, UINT64_MAX)
    if p.max_tokens is not None:
        _int_in("max_tokens", p.max_tokens, 1, INT32_MAX)  # (min_tokens > max_tokens is harmless here: the
        # server refuses it as a contradiction, the engine just bans EOS until max_tokens)


def _check_stop_ids(ids, vocab_size: int) -> None:
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise _refuse("stop_token_ids", f"holds at most {MAX_STOP_TOKEN_IDS} ids", len(ids))
    for i, t in enumerate(ids):
        if not _is_int(t) or not 0 <= t < vocab_size:
            raise _refuse(f"stop_token_ids[{i}]", f"must be a token id in [0, {vocab_size})", t)


def validate_sampling(p: SamplingParams, vocab_size: int | None = None, client: bool = True) -> None:
    """Raise InvalidInput naming the sampling field a user got wrong (see the module docstring for why each range).
    `vocab_size` bounds stop_token_ids (None: only >= 0 is checked). client=False (the engine's own check) skips
    the contradiction min_tokens > max_tokens, which cannot break a step (max_tokens wins) and which the pipeline
    refuses for clients."""
    _check_floats(p)
    _check_ints(p)
    _check_stop_ids(p.stop_token_ids, vocab_size if vocab_size is not None else UINT64_MAX)
    if client and p.max_tokens is not None and p.min_tokens > p.max_tokens:  # a contradiction the client should hear of
        raise _refuse("min_tokens", f"must be <= max_tokens ({p.max_tokens})", p.min_tokens)
    if client and p.top_logprobs and not p.logprobs:  # would be ignored silently otherwise
        raise _refuse("top_logprobs", "needs logprobs = true", p.top_logprobs)
    for i, stop in enumerate(p.stop):
        if not stop:  # an empty stop string would match at once
            raise _refuse(f"stop[{i}]", "must not be empty", stop)
