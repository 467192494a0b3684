"""2. Deadline: a 0.2 s deadline against a slow request gives DEADLINE_EXCEEDED and frees the work."""

from __future__ import annotations

import time

import grpc
import pytest

from reliability_helpers import collect, png, wait_idle
from vlm_service.client import build_request


def test_short_deadline_on_slow_request(server, stub):
    slow = build_request("write a long story", [png(seed=2)], max_tokens=1000, min_tokens=1000)  # ~seconds on CPU
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(slow, timeout=0.2))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.0
    assert wait_idle(server.server.runtime, timeout=2.0) is not None, server.server.runtime.engine.stats()
    _, complete = collect(stub.Generate(build_request("next", max_tokens=2)))  # the server goes on serving
    assert complete.usage.completion_tokens >= 1
