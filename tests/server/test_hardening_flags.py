"""The issue-12 flags: serve flags and VLM_* env equivalents reach the config, and the config reaches the processor
and the servicer's ownership."""

from __future__ import annotations

from vlm_service.cli import build_parser
from vlm_service.config import LimitsConfig
from vlm_service.ownership import Identity, Ownership
from vlm_service.runtime import processor_limits
from vlm_service.server.options import config_from_args


def _limits(argv, monkeypatch, env=None) -> LimitsConfig:
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return config_from_args(build_parser().parse_args(["serve", *argv])).server.limits


def test_defaults_are_safe(monkeypatch):
    lim = _limits([], monkeypatch)
    assert lim.trust_client_special_tokens is False and lim.operator_identity == ""
    assert lim.max_request_pixels > 0 and lim.max_decode_memory_bytes > 0 and lim.max_decode_wait_s > 0


def test_flags_and_env(monkeypatch):
    lim = _limits(["--trust-client-special-tokens", "--operator-identity", "ops,CN=root", "--max-request-pixels",
                   "1000", "--max-decode-memory-bytes", "2048"], monkeypatch)
    assert lim.trust_client_special_tokens and lim.max_request_pixels == 1000 and lim.max_decode_memory_bytes == 2048
    assert Ownership(lim.operator_identity).operators == {"ops", "CN=root"}
    env = _limits([], monkeypatch, {"VLM_TRUST_CLIENT_SPECIAL_TOKENS": "1", "VLM_MAX_DECODE_WAIT_S": "0.5"})
    assert env.trust_client_special_tokens and env.max_decode_wait_s == 0.5


def test_limits_reach_the_processor():
    kw = processor_limits(LimitsConfig(trust_client_special_tokens=True, max_request_pixels=5,
                                       max_decode_memory_bytes=7, max_decode_wait_s=3.0))
    assert kw["trust_client_special_tokens"] and kw["max_request_pixels"] == 5
    assert kw["decode_budget"].capacity == 7 and kw["decode_budget"].max_wait_s == 3.0


def test_ownership_keys():
    own = Ownership(["ops"])
    alice, bob = Identity("CN=alice", frozenset({"CN=alice", "alice"})), Identity("CN=bob", frozenset({"bob"}))
    ops = Identity("CN=ops", frozenset({"CN=ops", "ops"}))
    assert own.key(alice, "r") != own.key(bob, "r") and Ownership.key(Identity(), "r") == "r"
    own.claim(alice, "r")
    assert own.abortable(bob, "r") == [own.key(bob, "r")]
    assert own.key(alice, "r") in own.abortable(ops, "r") and not own.is_operator(alice)
    own.release(alice, "r")
    assert own.in_flight() == 0
