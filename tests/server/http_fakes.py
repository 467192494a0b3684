"""Helpers of the HTTP front-door tests over a fake runtime: a config with HTTP on, a processor that records the
images it was given, a tokenizer for logprob texts."""

from __future__ import annotations

import dataclasses

from tests.server.fakes import FakeEngine, FakeProcessor, fake_runtime
from vlm_service import types
from vlm_service.config import Config, HTTPConfig, LimitsConfig, ServerConfig, TLSConfig


class RecordingProcessor(FakeProcessor):
    """FakeProcessor that keeps the ImageInputs and VideoInputs it saw (what a URL fetch delivered)."""

    def __init__(self):
        super().__init__()
        self.images: list[types.ImageInput] = []
        self.videos: list[types.VideoInput] = []

    def process(self, messages):
        self.images += [p for m in messages for p in m.content if isinstance(p, types.ImageInput)]
        self.videos += [p for m in messages for p in m.content if isinstance(p, types.VideoInput)]
        return super().process(messages)


class FakeTokenizer:
    def decode(self, ids):
        return f"t{ids[0] - 100}"


def http_cfg(tmp_path, tls: TLSConfig | None = None, limits: dict | None = None, **server) -> Config:
    """Plaintext (unless tls) fake-runtime server with the HTTP front door on a free port; `server` fields override
    ServerConfig's (api_keys=...), `http=dict(...)` HTTPConfig's."""
    http = HTTPConfig(port=0, **server.pop("http", {}))
    lim = LimitsConfig(**{"max_images_per_request": 2, "max_request_bytes": 1 << 20, **(limits or {})})
    base = ServerConfig(port=0, state_dir=tmp_path, tls=tls or TLSConfig(insecure=True), limits=lim,
                        drain_timeout_s=10, http=http)
    return Config(server=dataclasses.replace(base, **server))


def http_runtime(delay: float = 0.01):
    rt = fake_runtime(FakeEngine(max_waiting=4, delay=delay))
    rt.processor, rt.tokenizer = RecordingProcessor(), FakeTokenizer()
    return rt
