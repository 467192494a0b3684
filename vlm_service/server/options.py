"""`vlm-service serve` flags <-> Config. Every flag has a VLM_<NAME> environment equivalent (flag wins over env).

Model, engine and limits flags are derived from the dataclass fields (--max-num-seqs <-> VLM_MAX_NUM_SEQS <->
EngineConfig.max_num_seqs), so a field added there is a flag here with no other change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from vlm_service.config import (Config, EngineConfig, HTTPConfig, LimitsConfig, ModelConfig, ParallelConfig,
                                ServerConfig, TLSConfig, default_state_dir)

_TRUE = ("1", "true", "yes", "on")
_SERVER_FLAGS = [  # (field, type, help) of ServerConfig/TLSConfig, written out for their help texts
    ("host", str, "TCP address to listen on: 127.0.0.1 = this machine only, 0.0.0.0 = every interface (then give "
                  "--tls-cert/--tls-key for the host's name: the dev certificate names only localhost)"),
    ("port", int, "TCP port (0 = any free port)"),
    ("uds", Path, "also listen on this Unix socket; mode 0600 is its access control, so it is plaintext "
                  "unless --tls-cert/--tls-key or --tls-client-ca are given"),
    ("tcp", bool, "the TCP listener (--no-tcp with --uds serves only the socket)"),
    ("state_dir", Path, "cache folder: demo model, dev TLS CA (state_dir/tls)"),
    ("metrics_port", int, "plain-HTTP port serving Prometheus metrics at /metrics, on --host (0 = off)"),
    ("log_format", str, "text, or json: one JSON object per line (the per-request line's fields as keys)"),
    ("drain_timeout_s", float, "on SIGTERM/SIGINT, how long in-flight streams may take to finish (a second "
                               "Ctrl-C stops at once)"),
    ("warmup_image_side", int, "before serving, run two requests with an image of this side (px), so the first "
                               "users of that size meet loaded kernels and a captured vision graph; 0 = text only"),
]
_TLS_FLAGS = [
    ("cert", "tls_cert", Path, "server certificate chain (PEM); reloaded for new connections when replaced"),
    ("key", "tls_key", Path, "server private key (PEM)"),
    ("client_ca", "tls_client_ca", Path, "require client certificates signed by this CA (mTLS)"),
]


# help texts of the dataclass-derived flags: what each does, what 0 means, which values a choice takes
_FIELD_HELP = {
    "model": "what to serve: a HF-format checkpoint folder, demo (tiny Qwen3-VL, random weights), demo:qwen2_5_vl, "
             "or random:qwen2_5_vl_7b / random:qwen3_vl_8b (full-size random weights, GPU only)",
    "device": "auto (cuda when present, else cpu), cpu, cuda or cuda:N",
    "dtype": "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16",
    "vit_attention_backend": "vision-tower attention: auto (measures the others once per shape bucket), sdpa, fa3 "
                             "(Hopper, extra [gpu]) or flashinfer_cudnn (extra [gpu])",
    "max_images_per_request": "more images in one request -> INVALID_ARGUMENT",
    "max_image_pixels": "largest image (width x height, read from its header before decoding) -> INVALID_ARGUMENT",
    "max_request_bytes": "largest request message (bytes) -> RESOURCE_EXHAUSTED",
    "max_prompt_tokens": "longest prompt in tokens, images included; 0 = the context length",
    "max_waiting_requests": "admitted requests not yet running; one more -> RESOURCE_EXHAUSTED",
    "max_waiting_tokens": "prompt tokens of the waiting requests together; 0 = no limit",
    "default_deadline_s": "deadline (seconds) of a request whose client gives none -> DEADLINE_EXCEEDED; 0 = none",
    "max_deadline_s": "cap on any request's deadline, the client's included (seconds); 0 = no cap",
    "default_max_tokens": "completion tokens of a request that sets no max_tokens; 0 = up to the context",
    "served_model_name": "the model name that /v1/models, responses and GetModelInfo report; empty = the model id",
    "chat_template": "a Jinja chat-template file used instead of the checkpoint's; empty = the checkpoint's",
    "preprocess_device": "where images and videos are preprocessed: auto (images on the host: nvJPEG's pixels differ "
                         "from libjpeg's; videos on the model's GPU when it has one, resized there as transformers' "
                         "video processors resize on CUDA), cpu (both on the host), or cuda (JPEG on nvJPEG, "
                         "resize/normalise of images and video frames on the GPU)",
    "max_buffered_outputs": "unread token chunks a stream may hold before its request is paused (KV freed, "
                            "recomputed when the reader catches up); 0 = never pause",
    "stalled_stream_timeout_s": "a request paused for a reader that stopped reading is aborted after this many "
                                "seconds; 0 = wait for the reader",
    "trust_client_special_tokens": "parse chat-template special tokens (<|im_start|> ...) in client text; off = "
                                   "they are plain text (only for trusted clients)",
    "max_request_pixels": "declared pixels summed over one request's images -> INVALID_ARGUMENT; 0 = no limit",
    "max_decode_memory_bytes": "estimated bytes of image decodes in flight server-wide; a request over it waits "
                               "(see --max-decode-wait-s); 0 = no limit",
    "max_decode_wait_s": "how long a request waits for decode memory before RESOURCE_EXHAUSTED; 0 = not at all",
    "operator_identity": "comma list of client-certificate names (subject, CN or SAN) or API-key names that may "
                         "abort any request",
    "max_videos_per_request": "more videos in one request -> INVALID_ARGUMENT",
    "max_video_bytes": "encoded size of one video -> RESOURCE_EXHAUSTED",
    "max_video_frames": "frames sampled from one video (a request's max_frames is capped by it)",
    "max_video_duration_s": "longest video (seconds, from the container header, before decoding) -> "
                            "INVALID_ARGUMENT",
    "max_video_frame_pixels": "largest video frame (width x height, from the header) -> INVALID_ARGUMENT",
    "max_video_fps": "a request's frame-sampling fps is capped by it",
    "video_decode_timeout_s": "demux + decode time of one video -> INVALID_ARGUMENT",
    "max_visual_tokens": "image + video tokens of one request -> INVALID_ARGUMENT; 0 = bounded by the prompt "
                         "limit only",
    "tensor_parallel_size": "GPUs (ranks) the text decoder is sharded over; this process is rank 0 and spawns "
                            "the others, unless launched by torchrun (RANK/WORLD_SIZE set)",
    "vision_parallel": "with tensor parallelism: data (each rank encodes a share of the images) or replicate "
                       "(rank 0 encodes all)",
    "master_addr": "address of rank 0 for spawned workers (launched ranks read MASTER_ADDR)",
    "master_port": "port of rank 0's rendezvous for spawned workers; 0 = a free port",
    "worker_exit_grace_s": "after a worker dies: health is NOT_SERVING at once, the process exits 1 this many "
                           "seconds later",
    "block_size": "tokens per KV-cache block (the prefix cache shares whole blocks)",
    "num_blocks": "KV-cache blocks; 0 = sized from free memory (--kv-memory-fraction on CUDA, --kv-cpu-bytes on CPU)",
    "kv_memory_fraction": "with --num-blocks 0 on CUDA: fraction of the free GPU memory for the KV cache",
    "kv_cpu_bytes": "with --num-blocks 0 on CPU: bytes for the KV cache",
    "max_num_seqs": "requests decoded together in one batch",
    "max_batched_tokens": "token budget of one step; longer prompts are prefilled in chunks of it",
    "max_model_len": "context length (prompt + completion); 0 = the checkpoint's max_position_embeddings",
    "enable_prefix_cache": "reuse the KV of a shared prompt prefix (same text and same images)",
    "vision_cache_bytes": "bytes of image embeddings kept for repeated images (keyed by content hash); 0 = off",
    "cuda_graphs": "replay decode steps as CUDA graphs (CUDA only)",
    "prefill_graph_max_tokens": "with --cuda-graphs: prefill and mixed steps of up to this many tokens replay "
                                "piecewise CUDA graphs (eager attention between the pieces; off under tensor "
                                "parallelism); 0 = eager",
    "overlap_scheduling": "launch step N+1 before step N's tokens are read back (--no-overlap-scheduling: serial)",
    "short_prefill_tokens": "a request with at most this many prompt tokens left to compute is scheduled before "
                            "long prefills (its first token does not wait for a large image's prefill); 0 = "
                            "arrival order",
    "mixed_long_prefill_tokens": "long prefill tokens (all long requests together) in a step that carries a short "
                                 "request's prefill; such a step also starts no long request's vision encode",
    "max_prefill_hold_steps": "steps in a row a long prefill may be held back for short ones before it gets its "
                              "full chunk (no starvation)",
    "step_log": "log one line per engine step (tokens, prefills, decodes, admitted ids, time since the last "
                "step, host time to launch it and to read tokens back) on logger vlm_service.steps",
}
_CHOICES = {"dtype": ("auto", "float32", "bfloat16", "float16"),
            "vit_attention_backend": ("auto", "sdpa", "fa3", "flashinfer_cudnn"),
            "preprocess_device": ("auto", "cpu", "cuda"), "vision_parallel": ("data", "replicate"),
            "log_format": ("text", "json"), "log_level": ("debug", "info", "warning", "error")}


def env_name(dest: str) -> str:
    return "VLM_" + dest.upper()


def _env_default(dest: str, kind, default):
    raw = os.environ.get(env_name(dest))
    if raw is None or raw == "":
        return default
    if kind is bool:
        return raw.strip().lower() in _TRUE
    return kind(raw)


def _add(group, dest: str, kind, default, help_text: str) -> None:
    flag = "--" + dest.replace("_", "-")
    value = _env_default(dest, kind, default)
    help_text = f"{help_text} [env {env_name(dest)}; default {default}]"
    if kind is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=value, help=help_text)
    else:
        group.add_argument(flag, dest=dest, type=kind, default=value, help=help_text, choices=_CHOICES.get(dest))


def _add_dataclass(parser, cls, title: str, skip=()) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default
        _add(group, f.name, type(default), default, _FIELD_HELP.get(f.name, f.name.replace("_", " ")))


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """All flags of `serve`, with env fallbacks."""
    _add_dataclass(parser, ModelConfig, "model")
    server = parser.add_argument_group("server")
    defaults = ServerConfig.__dataclass_fields__
    for name, kind, help_text in _SERVER_FLAGS:
        field = defaults[name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        _add(server, name, kind, default, help_text)
    tls = parser.add_argument_group("TLS (on by default; a local dev CA is made in state_dir/tls when no cert is given)")
    for _, dest, kind, help_text in _TLS_FLAGS:
        _add(tls, dest, kind, None, help_text)
    _add(tls, "insecure", bool, False, "PLAINTEXT listener (a warning is logged); only for trusted networks")
    _add_dataclass(parser, LimitsConfig, "limits")
    _add_dataclass(parser, EngineConfig, "engine")
    _add_dataclass(parser, ParallelConfig, "tensor parallel")
    _add(parser, "log_level", str, "info", "debug, info, warning or error")
    add_http_flags(parser)


def _env_list(dest: str) -> list[str]:
    raw = os.environ.get(env_name(dest), "")
    return [v.strip() for v in raw.split(",") if v.strip()]


def add_http_flags(parser: argparse.ArgumentParser) -> None:
    """The OpenAI-compatible HTTP front door and the API keys (both transports)."""
    g = parser.add_argument_group("HTTP (OpenAI-compatible; off unless --http-port is given) and API keys")
    _add(g, "http_port", int, None, "serve POST /v1/chat/completions, /v1/models, /health, /health/ready on this "
                                    "TCP port beside gRPC (same host, TLS and limits; 0 = any free port)")
    _add(g, "http_metrics", bool, False, "also serve Prometheus /metrics on the HTTP port")
    g.add_argument("--allowed-media-domains", nargs="+", default=_env_list("allowed_media_domains"),
                   help="hosts whose http(s) image and video URLs may be fetched (exact names); none = refused "
                        "[env VLM_ALLOWED_MEDIA_DOMAINS, comma-separated]")
    _add(g, "allowed_local_media_path", Path, None, "file:// image and video URLs allowed under this folder (off when unset)")
    _add(g, "media_fetch_timeout_s", float, HTTPConfig.media_fetch_timeout_s, "timeout of one image or video fetch")
    _add(g, "max_media_bytes", int, HTTPConfig.max_media_bytes,
         "size cap of one fetched image or video (http(s) / file:// URL; data: URLs: --max-request-bytes)")
    g.add_argument("--api-key", dest="api_key", action="append", default=_env_list("api_key"),
                   help="accepted API key, NAME:KEY or KEY (repeatable), checked on gRPC (authorization metadata) "
                        "and HTTP (Authorization: Bearer); the name is the caller's identity; health stays open "
                        "[env VLM_API_KEY, comma-separated]")
    _add(g, "api_keys_file", Path, None, "file of API keys, one 'NAME KEY' or 'KEY' per line")


def _http_config(args: argparse.Namespace) -> HTTPConfig:
    return HTTPConfig(port=args.http_port, metrics=args.http_metrics,
                      allowed_media_domains=tuple(args.allowed_media_domains or ()),
                      allowed_local_media_path=args.allowed_local_media_path,
                      media_fetch_timeout_s=args.media_fetch_timeout_s, max_media_bytes=args.max_media_bytes)


def _pick(cls, args: argparse.Namespace, **extra):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **extra})


def config_from_args(args: argparse.Namespace) -> Config:
    """The frozen Config of parsed serve flags (raises ValueError on bad combinations)."""
    tls = TLSConfig(insecure=args.insecure, cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
    limits = _pick(LimitsConfig, args)
    server = _pick(ServerConfig, args, tls=tls, limits=limits, state_dir=Path(args.state_dir or default_state_dir()),
                   http=_http_config(args), api_keys=tuple(args.api_key or ()), api_keys_file=args.api_keys_file)
    return Config(model=_pick(ModelConfig, args), engine=_pick(EngineConfig, args), server=server,
                  parallel=_pick(ParallelConfig, args))


def redacted(cfg: Config) -> dict:
    """The effective config as a dict for the start-up log, with the private key's path hidden."""
    d = dataclasses.asdict(cfg)
    tls = d["server"]["tls"]
    if tls.get("key"):
        tls["key"] = "<redacted>"
    d["server"]["api_keys"] = [f"<{len(d['server']['api_keys'])} keys redacted>"] if d["server"]["api_keys"] else []
    return _stringify(d)


def _stringify(value):
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value
