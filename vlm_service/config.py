"""Frozen configuration, validated once at construction and passed through constructors (no globals).

CLI flags map onto these fields one to one; every flag has a VLM_<FIELD> environment equivalent (cli.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


# What a request gets when it does not say (server, Python client and CLI agree): a finite completion, so a request
# that forgets max_tokens returns in seconds rather than generating to the end of a 32k context; and a deadline
DEFAULT_MAX_TOKENS = 256
DEFAULT_DEADLINE_S = 300.0


def default_state_dir() -> Path:
    """VLM_STATE_DIR, else the user's cache dir: server and bundled client agree on where the dev CA lives."""
    if os.environ.get("VLM_STATE_DIR"):
        return Path(os.environ["VLM_STATE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlm-service"


@dataclass(frozen=True)
class ModelConfig:
    model: str = "demo"  # a HF-format directory, "demo", "demo:qwen2_5_vl" or "random:<preset>"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    vit_attention_backend: str = "auto"  # auto | sdpa | fa3 | flashinfer_cudnn

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16
    num_blocks: int = 0  # 0 = size the KV pool from free memory (kv_memory_fraction on CUDA, kv_cpu_bytes on CPU)
    kv_memory_fraction: float = 0.85
    kv_cpu_bytes: int = 256 << 20
    max_num_seqs: int = 64  # requests running at once
    max_batched_tokens: int = 4096  # token budget of one step (chunked prefill)
    max_model_len: int = 0  # 0 = the checkpoint's max_position_embeddings
    enable_prefix_cache: bool = True
    vision_cache_bytes: int = 256 << 20
    cuda_graphs: bool = True
    overlap_scheduling: bool = True  # read back step N's tokens while step N+1 runs on the device

    def __post_init__(self):
        if self.block_size <= 0 or self.max_num_seqs <= 0 or self.max_batched_tokens <= 0:
            raise ValueError("block_size, max_num_seqs and max_batched_tokens must be positive")


@dataclass(frozen=True)
class LimitsConfig:
    max_images_per_request: int = 8
    max_image_pixels: int = 40_000_000  # checked from the image header before decoding
    max_request_bytes: int = 64 << 20  # gRPC max receive message size
    max_prompt_tokens: int = 0  # 0 = max_model_len
    max_waiting_requests: int = 256
    max_waiting_tokens: int = 0  # 0 = unlimited
    default_deadline_s: float = DEFAULT_DEADLINE_S  # when the client gives none; 0 = none
    max_deadline_s: float = 0.0  # 0 = none
    default_max_tokens: int = DEFAULT_MAX_TOKENS  # when the request gives none; 0 = up to the context

    def __post_init__(self):
        if self.default_max_tokens < 0 or self.default_deadline_s < 0 or self.max_deadline_s < 0:
            raise ValueError("--default-max-tokens, --default-deadline-s and --max-deadline-s must be >= 0")


@dataclass(frozen=True)
class TLSConfig:
    insecure: bool = False  # plaintext only when explicitly asked
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None  # set = mTLS

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    uds: Path | None = None  # an extra listener on this Unix socket (mode 0600, plaintext unless TLS files given)
    tcp: bool = True  # False with uds = serve only the socket
    state_dir: Path = field(default_factory=default_state_dir)
    metrics_port: int = 0  # 0 = off
    log_format: str = "text"  # text | json
    drain_timeout_s: float = 30.0
    warmup_image_side: int = 1024  # warm-up images of this side at start (see server/app.py _warmup); 0 = text only
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self):
        if not self.tcp and self.uds is None:
            raise ValueError("--no-tcp needs --uds: the server would have no listener")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
