"""The records every part of the TTFT harness shares: where to send (Target), how (LoadPlan), and what each request
did (RequestResult). Plain dataclasses, no transport, so the gRPC load generator (loadgen.py), the OpenAI-compatible
backend (openai_client.py), the metrics and the reports all import them from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

TIMING_FIELDS = ("queue_ms", "preprocess_ms", "decode_ms", "vision_ms", "prefill_ms", "ttft_ms", "e2e_ms")


@dataclass(frozen=True)
class Target:
    """Where the server listens and how to talk to it: host:port or unix:PATH; TLS unless insecure."""

    address: str
    insecure: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # TLS name override, e.g. when the cert names "localhost" and we dial 127.0.0.1
    backend: str = "grpc"  # grpc | openai (an OpenAI-compatible HTTP server: address is its URL; bench/openai_client)
    api_key: str | None = None  # sent as authorization: Bearer (gRPC metadata or HTTP header)
    model: str | None = None  # openai: the request's model (default: the first of GET /v1/models)


@dataclass(frozen=True)
class LoadPlan:
    """How to send: arrival rate (inf = all at once), concurrency cap, bounds, deadline."""

    request_rate: float = math.inf
    burstiness: float = 1.0  # 1 = Poisson; < 1 burstier, > 1 more regular (gamma inter-arrival times)
    max_concurrency: int | None = None
    num_prompts: int | None = None
    duration_s: float | None = None
    timeout_s: float | None = 60.0
    seed: int = 0
    ignore_eos: bool = True
    temperature: float | None = None
    logprobs: bool = False  # ask each token's logprob (a token with no text then still marks its arrival over HTTP)
    warmup_concurrency: int = 1  # warm-up requests in flight at once (the run's cap warms what a loaded server runs)


@dataclass
class RequestResult:
    """What one request did, client side, plus the server's own Complete.timings."""

    index: int
    request_id: str
    ok: bool = False
    status: str = "OK"
    error: str = ""
    send_s: float = 0.0  # when it was sent, seconds after the run started
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    num_images: int = 0
    pixels: int = 0
    finish_reason: str = ""
    server: dict[str, float] = field(default_factory=dict)

    @property
    def tpot_ms(self) -> float | None:
        """(E2E - TTFT) / (output_tokens - 1), as vLLM and SGLang define it; None for one-token outputs."""
        if not self.ok or self.output_tokens < 2 or self.ttft_ms is None:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        return {**asdict(self), "tpot_ms": self.tpot_ms}
