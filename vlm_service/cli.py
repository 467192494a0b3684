"""`vlm-service`: serve | generate | info | health | bench | make-demo-model."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from vlm_service.config import default_state_dir

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

    setup_logging(args.log_level, args.log_format)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    log.info("effective config: %s", json.dumps(redacted(cfg)))
    return asyncio.run(serve(cfg))


# --- client commands -----------------------------------------------------------------------------------------------

def _client(args: argparse.Namespace):
    from vlm_service.client import Client

    target = f"unix:{Path(args.uds).resolve()}" if args.uds else args.target
    return Client(target, ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure,
                  state_dir=args.state_dir)


def _sampling(args: argparse.Namespace) -> dict:
    names = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "min_tokens", "repetition_penalty")
    out = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if out.get("max_tokens") == 0:
        del out["max_tokens"]  # unset: up to the context
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

    request = build_request(args.prompt, args.image, system=args.system, request_id=args.request_id,
                            **_sampling(args))
    with _client(args) as client:
        try:
            for resp in client.generate(request, timeout=args.timeout):
                if resp.HasField("chunk"):
                    sys.stdout.write(resp.chunk.text)
                    sys.stdout.flush()
                else:
                    _print_complete(resp.complete, sys.stderr)
        except grpc.RpcError as exc:
            print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    with _client(args) as client:
        try:
            print(json_format.MessageToJson(client.info(), preserving_proto_field_name=True))
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when `--service` (default "": the process) is SERVING; for exec probes."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _client(args) as client:
        try:
            req = health_pb2.HealthCheckRequest(service=args.service)
            status = health_pb2_grpc.HealthStub(client.channel).Check(req, timeout=args.timeout).status
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_make_demo_model(args: argparse.Namespace) -> int:
    from vlm_service.demo.checkpoint import ensure_demo_model

    print(ensure_demo_model(Path(args.out), args.arch))
    return 0


# --- parser --------------------------------------------------------------------------------------------------------

def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    p.add_argument("--uds", type=Path, help="dial this Unix socket instead (plaintext unless --ca/--cert)")
    p.add_argument("--ca", type=Path, help="CA to trust (default: the dev CA in STATE_DIR/tls, else system roots)")
    p.add_argument("--cert", type=Path, help="client certificate (mTLS)")
    p.add_argument("--key", type=Path, help="client private key (mTLS)")
    p.add_argument("--insecure", action="store_true", help="plaintext")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), help="where the dev CA lives")


def _add_generate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--image", action="append", default=[], type=Path, help="an image file (repeatable)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--request-id", default="")
    p.add_argument("--timeout", type=float, help="deadline in seconds")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=128,
                   help="tokens to generate at most (default 128; 0 = up to the context)")
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
    demo.add_argument("--out", type=Path, required=True)
    demo.set_defaults(func=cmd_make_demo_model)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    from vlm_service.bench import main as bench_main

    return bench_main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser, flags and --help included
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
