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
    ("host", str, "TCP address to listen on"),
    ("port", int, "TCP port (0 = any free port)"),
    ("uds", Path, "also listen on this Unix socket; mode 0600 is its access control, so it is plaintext "
                  "unless --tls-cert/--tls-key or --tls-client-ca are given"),
    ("tcp", bool, "the TCP listener (--no-tcp with --uds serves only the socket)"),
    ("state_dir", Path, "cache folder: demo model, dev TLS CA (state_dir/tls)"),
    ("metrics_port", int, "Prometheus /metrics port (0 = off)"),
    ("log_format", str, "text or json"),
    ("drain_timeout_s", float, "on SIGTERM/SIGINT, how long in-flight streams may take to finish"),
    ("warmup_image_side", int, "before serving, run two requests with an image of this side (px), so the first "
                               "users of that size meet loaded kernels and a captured vision graph; 0 = text only"),
]
_TLS_FLAGS = [
    ("cert", "tls_cert", Path, "server certificate chain (PEM); reloaded for new connections when replaced"),
    ("key", "tls_key", Path, "server private key (PEM)"),
    ("client_ca", "tls_client_ca", Path, "require client certificates signed by this CA (mTLS)"),
]


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
        group.add_argument(flag, dest=dest, type=kind, default=value, help=help_text)


def _add_dataclass(parser, cls, title: str, skip=()) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default
        _add(group, f.name, type(default), default, f.name.replace("_", " "))


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
    _add(parser, "log_level", str, "info", "debug | info | warning | error")
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
                   help="hosts whose http(s) image URLs may be fetched (exact names); none = refused "
                        "[env VLM_ALLOWED_MEDIA_DOMAINS, comma-separated]")
    _add(g, "allowed_local_media_path", Path, None, "file:// image URLs allowed under this folder (off when unset)")
    _add(g, "media_fetch_timeout_s", float, HTTPConfig.media_fetch_timeout_s, "timeout of one image fetch")
    _add(g, "max_media_bytes", int, HTTPConfig.max_media_bytes, "size cap of one fetched image")
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
