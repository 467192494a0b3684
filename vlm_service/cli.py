"""`vlm-service`: serve | generate | info | health | bench | make-demo-model."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from vlm_service.config import DEFAULT_DEADLINE_S, DEFAULT_MAX_TOKENS, default_state_dir

log = logging.getLogger("vlm_service")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's `fields` extra (the per-request line) becomes top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# --- serve -------------------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from vlm_service.server.app import serve
    from vlm_service.server.options import config_from_args, redacted

    from vlm_service.preflight import check_serve

    setup_logging(args.log_level, args.log_format)
    try:
        cfg = config_from_args(args)
        check_serve(cfg)
    except ValueError as exc:
        return _user_error("serve", exc)
    log.info("effective config: %s", json.dumps(redacted(cfg)))
    if cfg.parallel.tensor_parallel_size > 1 and int(os.environ.get("RANK", "0")) != 0:
        from vlm_service.engine.parallel.worker import serve_rank  # torchrun / LeaderWorkerSet: not rank 0

        return serve_rank(cfg)
    try:
        return asyncio.run(serve(cfg))
    except ValueError as exc:  # a listener could not be bound, or --uds names something that is not a socket
        return _user_error("serve", exc)


def _user_error(command: str, message) -> int:
    """One line on stderr and exit code 2 (argparse's code for a usage error)."""
    print(f"vlm-service {command}: error: {message}", file=sys.stderr)
    return 2


# --- client commands -----------------------------------------------------------------------------------------------

def _client(args: argparse.Namespace):
    from vlm_service.client import Client

    target = f"unix:{Path(args.uds).resolve()}" if args.uds else args.target
    return Client(target, ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure,
                  state_dir=args.state_dir, server_name=args.server_name)


def _missing_file(args: argparse.Namespace) -> str | None:
    """The first client flag naming a file that does not exist, as 'FLAG PATH: no such file'."""
    for flag in ("ca", "cert", "key"):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_file():
            return f"--{flag} {path}: no such file"
    for path in getattr(args, "image", None) or ():
        if not Path(path).is_file():
            return f"--image {path}: no such file"
    return None


def _rpc_failed(exc) -> int:
    from vlm_service.client import error_line

    print(f"error: {error_line(exc)}", file=sys.stderr)
    return 1


def _sampling(args: argparse.Namespace) -> dict:
    names = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "min_tokens", "repetition_penalty")
    out = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if out.get("max_tokens") == 0:
        out["max_tokens"] = None  # unset: the server's --default-max-tokens
    if args.stop:
        out["stop"] = args.stop
    return out


def _print_complete(complete, stream) -> None:
    from vlm_service._proto.vlm.v1 import vlm_pb2

    u, t = complete.usage, complete.timings
    print(f"\n[{vlm_pb2.FinishReason.Name(complete.finish_reason)}] prompt={u.prompt_tokens} "
          f"completion={u.completion_tokens} cached={u.cached_tokens} image={u.image_tokens} | "
          f"ttft={t.ttft_ms:.1f}ms e2e={t.e2e_ms:.1f}ms preprocess={t.preprocess_ms:.1f}ms "
          f"vision={t.vision_ms:.1f}ms queue={t.queue_ms:.1f}ms", file=stream)


def cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from vlm_service.client import build_request

    missing = _missing_file(args)
    if missing:
        return _user_error("generate", missing)
    request = build_request(args.prompt, args.image, system=args.system, request_id=args.request_id,
                            videos=args.video, **_sampling(args))
    with _client(args) as client:
        try:
            for resp in client.generate(request, timeout=args.timeout):
                if resp.HasField("chunk"):
                    sys.stdout.write(resp.chunk.text)
                    sys.stdout.flush()
                else:
                    _print_complete(resp.complete, sys.stderr)
        except grpc.RpcError as exc:
            sys.stdout.flush()
            return _rpc_failed(exc)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    missing = _missing_file(args)
    if missing:
        return _user_error("info", missing)
    with _client(args) as client:
        try:
            print(json_format.MessageToJson(client.info(), preserving_proto_field_name=True))
        except grpc.RpcError as exc:
            return _rpc_failed(exc)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when `--service` (default "": the process) is SERVING, 1 otherwise (NOT_SERVING while loading or
    draining, or unreachable); for exec probes."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    missing = _missing_file(args)
    if missing:
        return _user_error("health", missing)
    with _client(args) as client:
        try:
            req = health_pb2.HealthCheckRequest(service=args.service)
            status = health_pb2_grpc.HealthStub(client.channel).Check(req, timeout=args.timeout).status
        except grpc.RpcError as exc:
            return _rpc_failed(exc)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_make_demo_model(args: argparse.Namespace) -> int:
    """Write the demo checkpoint into --out itself (so `serve --model OUT` loads it)."""
    from vlm_service.demo.checkpoint import build_once, make_demo_model

    out = Path(args.out)
    if out.exists() and not (out / "config.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        return _user_error("make-demo-model", f"--out {out}: exists and is not an empty folder or a checkpoint")
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # build_once renames a finished build into place
    print(build_once(out, lambda d: make_demo_model(d, args.arch)))
    return 0


# --- parser --------------------------------------------------------------------------------------------------------

def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    p.add_argument("--uds", type=Path, help="dial this Unix socket instead (plaintext unless --ca/--cert)")
    p.add_argument("--ca", type=Path, help="CA to trust (default: the dev CA in STATE_DIR/tls, else system roots)")
    p.add_argument("--cert", type=Path, help="client certificate (mTLS)")
    p.add_argument("--key", type=Path, help="client private key (mTLS)")
    p.add_argument("--insecure", action="store_true", help="plaintext")
    p.add_argument("--server-name", help="TLS name to check the server certificate against, when it differs from "
                                         "the host dialled (e.g. localhost: the dev certificate's name)")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), help="where the dev CA lives")


def _add_generate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--image", action="append", default=[], type=Path, help="an image file (repeatable)")
    p.add_argument("--video", action="append", default=[], type=Path,
                   help="a video file: MP4, WebM or MOV (repeatable; after the images)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--request-id", default="")
    p.add_argument("--timeout", type=float, default=DEFAULT_DEADLINE_S,
                   help=f"deadline in seconds (default {DEFAULT_DEADLINE_S:g})")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"tokens to generate at most (default {DEFAULT_MAX_TOKENS}; 0 = the server's "
                        "--default-max-tokens)")
    for name, kind in (("temperature", float), ("top_p", float), ("top_k", int),
                       ("min_p", float), ("seed", int), ("min_tokens", int), ("repetition_penalty", float)):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)


def build_parser() -> argparse.ArgumentParser:
    from vlm_service.server.options import add_serve_flags

    parser = argparse.ArgumentParser(prog="vlm-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server", description=(
        "Serve a model over gRPC. TLS is on by default on TCP (a local dev CA is created in STATE_DIR/tls); "
        "--insecure for plaintext. --uds serves a Unix socket (mode 0600), plaintext by default there."))
    add_serve_flags(serve)
    serve.set_defaults(func=cmd_serve)
    gen = sub.add_parser("generate", help="stream a completion from a server")
    _add_client_flags(gen)
    _add_generate_flags(gen)
    gen.set_defaults(func=cmd_generate)
    info = sub.add_parser("info", help="print the served model's info")
    _add_client_flags(info)
    info.set_defaults(func=cmd_info)
    health = sub.add_parser("health", help="check grpc.health.v1 (exit 0 when SERVING)")
    _add_client_flags(health)
    health.add_argument("--service", default="", help='"" = the process; vlm.v1.VisionLanguageService = ready')
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=cmd_health)
    bench = sub.add_parser("bench", add_help=False, help="TTFT/throughput load generator (vlm-service bench --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    demo = sub.add_parser("make-demo-model", help="write the tiny demo checkpoint (HF format)")
    demo.add_argument("--arch", choices=("qwen3_vl", "qwen2_5_vl"), default="qwen3_vl")
    demo.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint into (new or empty)")
    demo.set_defaults(func=cmd_make_demo_model)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    from vlm_service.bench import main as bench_main

    return bench_main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's own info lines (handshake failures) would double ours
    if argv[:1] == ["bench"]:  # its own parser, flags and --help included
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
