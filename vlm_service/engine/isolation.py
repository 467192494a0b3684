"""Fault isolation of a batched step: when the step raises, find the rows that make it raise and fail only those.

The step is re-run on halves of the batch, down to single rows (bisection): a group that succeeds keeps its result,
a single row that still fails is a culprit. The results of the successful groups, in batch order, are exactly what
the whole batch would have given the other rows: every row's output depends on its own inputs only (attention reads
a sequence's own blocks; seeded draws depend on seed and position; greedy on the row's logits). Re-running a forward
is idempotent for the KV cache: the same tokens write the same K/V into the same slots.

The message a client sees for a culprit is generic; the exception itself goes to the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from vlm_service.errors import InternalError, ServiceError
from vlm_service.engine.sampler import PendingSample, SampleResult

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

GENERIC_MESSAGE = "the request failed inside the engine; the server log has the details"


@dataclass
class Failed:
    """A request the engine had to drop: `error` is what its client gets (a ServiceError, message safe to show)."""

    request_id: str
    error: ServiceError


def client_error(exc: BaseException, request_id: str) -> ServiceError:
    """What a client may see of `exc`: a ServiceError as it is (its text is written for users), anything else
    becomes InternalError with a generic message, logged here with its traceback."""
    if isinstance(exc, ServiceError):
        return exc
    log.error("request %s failed inside the engine: %s: %s", request_id, type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__))
    return InternalError(GENERIC_MESSAGE)


def run_isolated(items: Sequence[T], trial: Callable[[Sequence[T]], R]
                 ) -> tuple[list[tuple[Sequence[T], R]], list[tuple[T, Exception]]]:
    """trial(items); where it raises, bisect: returns ([(group, result)] of the groups that ran, in order, and
    [(item, exception)] of the single items that fail alone). The first call is the whole batch, so the normal
    path costs nothing extra; k culprits among n rows cost about 2k·log2(n) more trials."""
    try:
        return [(items, trial(items))], []
    except Exception as exc:  # noqa: BLE001 - any failure is attributed, never propagated as is
        failure = exc
    if len(items) == 1:  # (outside the except: the halves' tracebacks do not chain onto this one)
        return [], [(items[0], failure)]
    mid = len(items) // 2
    ok_a, bad_a = run_isolated(items[:mid], trial)
    ok_b, bad_b = run_isolated(items[mid:], trial)
    return ok_a + ok_b, bad_a + bad_b


class PendingGroups:
    """The PendingSamples of the groups a bisected sampling ran in, seen as one (rows in batch order)."""

    def __init__(self, parts: list[PendingSample]):
        self.parts = parts
        self.device_tokens = torch.cat([p.device_tokens for p in parts])  # [B] like PendingSample's

    def result(self) -> SampleResult:
        tokens, logprobs = [], []
        for p in self.parts:
            r = p.result()
            tokens += r.token_ids
            logprobs += r.logprobs
        return SampleResult(tokens, logprobs)
