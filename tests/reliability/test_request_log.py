"""One structured log line per finished request: request_id, peer, images, pixels, tokens, status, ttft_ms, e2e_ms;
never the prompt text or image bytes. With --log-format json the fields are top-level JSON keys."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from reliability_helpers import collect, png, wait_until
from vlm_service.cli import _JsonFormatter
from vlm_service.client import build_request

SECRET = "zebra-secret-prompt-text"


def _lines(caplog, request_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vlm_service.requests" and r.fields["request_id"] == request_id]


def test_success_line_has_the_fields_and_no_content(server, stub, caplog):
    caplog.set_level(logging.INFO, logger="vlm_service.requests")
    image = png(40, 40, seed=300)
    tokens, complete = collect(stub.Generate(build_request(SECRET, [image], request_id="log-ok", max_tokens=3)))
    assert wait_until(lambda: _lines(caplog, "log-ok"), 2.0)
    [record] = _lines(caplog, "log-ok")
    f = record.fields
    assert f["status"] == "OK" and f["images"] == 1 and f["pixels"] >= 28 * 28
    assert f["prompt_tokens"] == complete.usage.prompt_tokens and f["completion_tokens"] == len(tokens)
    assert f["ttft_ms"] > 0 and f["e2e_ms"] >= f["ttft_ms"] and f["peer"]
    entry = json.loads(_JsonFormatter().format(record))
    assert entry["request_id"] == "log-ok" and entry["status"] == "OK" and entry["logger"] == "vlm_service.requests"
    text = caplog.text + json.dumps(entry)
    assert SECRET not in text and repr(image[:16])[2:-1] not in text


def test_refused_request_logs_its_status(server, stub, caplog):
    caplog.set_level(logging.INFO, logger="vlm_service.requests")
    with pytest.raises(grpc.RpcError):
        collect(stub.Generate(build_request(SECRET, [b"junk"], request_id="log-bad", max_tokens=1)))
    assert wait_until(lambda: _lines(caplog, "log-bad"), 2.0)
    [record] = _lines(caplog, "log-bad")
    assert record.fields["status"] == "INVALID_ARGUMENT" and record.fields["completion_tokens"] == 0
    assert SECRET not in caplog.text


@pytest.mark.parametrize("rid", ["x\nrequest request_id=forged status=OK", "y\r\x1b[2Krequest request_id=forged",
                                 "z\u2028request request_id=forged", "w" * 5000 + "\nrequest request_id=forged"])
def test_a_client_string_cannot_forge_a_log_line(server, stub, caplog, rid):
    caplog.set_level(logging.INFO, logger="vlm_service.requests")
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(build_request("hi", request_id=rid, max_tokens=1)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wait_until(lambda: any(r.fields["request_id"][:1] == rid[:1]
                                  for r in caplog.records if r.name == "vlm_service.requests"), 2.0)
    for record in (r for r in caplog.records if r.name == "vlm_service.requests"):
        line = record.getMessage()
        assert not any(c in line for c in "\n\r\x1b\u2028") and len(line) < 600, line[:80]
        assert record.fields["request_id"] != "forged"
        assert "\n" not in _JsonFormatter().format(record)
