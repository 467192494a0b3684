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
    served_model_name: str = ""  # what /v1/models, responses and GetModelInfo report; "" = the model id
    chat_template: str = ""  # a jinja file overriding the checkpoint's chat template; "" = the checkpoint's
    # auto | cpu | cuda: image decode + preprocess, video frame resize + normalise + layout. auto: images on the host
    # (see gpu_preprocess.py), videos on the model's CUDA device when it has one (gpu_video.py)
    preprocess_device: str = "auto"

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")
        if self.preprocess_device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"preprocess_device must be auto, cpu or cuda, not {self.preprocess_device!r}")


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
    # with cuda_graphs: prefill / mixed steps of up to this many tokens replay piecewise CUDA graphs (cut at every
    # attention call, engine/prefill_graphs.py); 0 = such steps run eagerly
    prefill_graph_max_tokens: int = 1024
    overlap_scheduling: bool = True  # read back step N's tokens while step N+1 runs on the device
    # short-first prefill (engine/prefill_policy.py): a request with at most this many prompt tokens left to
    # compute goes before long prefills; 0 = arrival order only
    short_prefill_tokens: int = 2048
    mixed_long_prefill_tokens: int = 256  # long prefill tokens (all together) in a step that carries a short one
    max_prefill_hold_steps: int = 4  # such steps in a row a long prefill may be held back before it goes in full
    step_log: bool = False  # one INFO line per engine step on logger vlm_service.steps (latency diagnosis)

    def __post_init__(self):
        if self.block_size <= 0 or self.max_num_seqs <= 0 or self.max_batched_tokens <= 0:
            raise ValueError("block_size, max_num_seqs and max_batched_tokens must be positive")
        if self.prefill_graph_max_tokens < 0:
            raise ValueError("prefill_graph_max_tokens must be >= 0")
        if min(self.short_prefill_tokens, self.mixed_long_prefill_tokens, self.max_prefill_hold_steps) < 0:
            raise ValueError("short_prefill_tokens, mixed_long_prefill_tokens and max_prefill_hold_steps must be "
                             ">= 0")


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
    # backpressure: TokenDeltas a stream may hold unread before its request is paused (KV blocks freed,
    # recomputed when the reader has taken half of them); 0 = never pause
    max_buffered_outputs: int = 256
    stalled_stream_timeout_s: float = 120.0  # a request paused this long is aborted; 0 = wait for the reader
    trust_client_special_tokens: bool = False  # parse <|im_start|> etc. in client text (trusted clients only)
    max_request_pixels: int = 80_000_000  # declared pixels summed over a request's images (0 = no limit)
    max_decode_memory_bytes: int = 2 << 30  # server-wide estimated bytes of image decodes in flight (0 = no limit)
    max_decode_wait_s: float = 10.0  # how long a request may wait for decode memory before RESOURCE_EXHAUSTED
    operator_identity: str = ""  # comma list of client-certificate names (subject, CN or SAN) that may abort any request
    max_videos_per_request: int = 4
    max_video_bytes: int = 256 << 20  # encoded size of one video (RESOURCE_EXHAUSTED over it)
    max_video_frames: int = 256  # frames sampled from one video (a request's max_frames is capped by it)
    max_video_duration_s: float = 3600.0  # declared by the container header, checked before decoding
    max_video_frame_pixels: int = 3840 * 2160  # width * height of one video frame, from the header
    max_video_fps: float = 8.0  # a request's sampling fps is capped by it
    video_decode_timeout_s: float = 30.0  # demux + decode of one video
    max_visual_tokens: int = 0  # image + video tokens of one request; 0 = bounded by the prompt limit only
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
class HTTPConfig:
    """The OpenAI-compatible HTTP front door (server/http_app.py), beside gRPC in the same process."""

    port: int | None = None  # None = off; 0 = any free port
    metrics: bool = False  # also serve /metrics on this port
    allowed_media_domains: tuple[str, ...] = ()  # http(s) image URLs only from these hosts; empty = refused
    allowed_local_media_path: Path | None = None  # file:// image URLs only under this folder; None = refused
    media_fetch_timeout_s: float = 10.0
    max_media_bytes: int = 20 << 20  # cap of one fetched image or video (URL or file)

    def __post_init__(self):
        if self.media_fetch_timeout_s <= 0 or self.max_media_bytes <= 0:
            raise ValueError("--media-fetch-timeout-s and --max-media-bytes must be positive")


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
    http: HTTPConfig = field(default_factory=HTTPConfig)
    api_keys: tuple[str, ...] = ()  # accepted API keys ("NAME:KEY" or "KEY"), both transports; empty = no key check
    api_keys_file: Path | None = None  # more keys, one "NAME KEY" or "KEY" per line

    def __post_init__(self):
        if not self.tcp and self.uds is None:
            raise ValueError("--no-tcp needs --uds: the server would have no listener")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor parallelism (engine/parallel/): this process is rank 0 and spawns N-1 workers on this host, unless
    it was launched with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun, a LeaderWorkerSet), then it joins."""

    tensor_parallel_size: int = 1
    vision_parallel: str = "data"  # data: each rank encodes a share of a step's images | replicate: rank 0 all
    master_addr: str = "127.0.0.1"  # spawned workers only (launched ranks read MASTER_ADDR)
    master_port: int = 0  # 0 = a free port
    worker_exit_grace_s: float = 2.0  # a dead worker: health NOT_SERVING at once, the process exits 1 after this

    def __post_init__(self):
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        if self.vision_parallel not in ("data", "replicate"):
            raise ValueError(f"vision_parallel must be data or replicate, not {self.vision_parallel!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
