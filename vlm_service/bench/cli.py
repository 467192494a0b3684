"""`vlm-service bench` / benchmarks/ttft.py: flags, then dataset -> runs -> files, tables and plots."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import sys
from pathlib import Path

from vlm_service.bench import report
from vlm_service.bench.dataset import DatasetSpec, build_dataset, parse_range
from vlm_service.bench.records import LoadPlan, Target
from vlm_service.bench.metrics import parse_goodput, summarize
from vlm_service.bench.runner import Run, bench_target, compare, compare_labels
from vlm_service.client import DEFAULT_TARGET
from vlm_service.config import default_state_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-service bench", description="TTFT / throughput benchmark over gRPC or OpenAI-compatible HTTP")
    t = p.add_argument_group("target (the same flags as `vlm-service generate`)")
    t.add_argument("--target", help=f"host:port or unix:PATH of a running server (default {DEFAULT_TARGET}, the "
                                    "local `vlm-service serve`, unless --compare or --peer is given)")
    t.add_argument("--uds", type=Path, help="dial this Unix socket instead (plaintext unless --ca/--cert)")
    t.add_argument("--insecure", action="store_true", help="plaintext (no TLS)")
    t.add_argument("--ca", type=Path, help="CA to trust (default: the dev CA in STATE_DIR/tls, else system roots)")
    t.add_argument("--cert", type=Path, help="client certificate (mTLS)")
    t.add_argument("--key", type=Path, help="client private key (mTLS)")
    t.add_argument("--server-name", help="TLS name to check the certificate against when it differs from the host")
    t.add_argument("--state-dir", type=Path, default=default_state_dir(), help="where the dev CA lives")
    for old, dest, kind in (("--tls-ca", "ca", Path), ("--tls-cert", "cert", Path), ("--tls-key", "key", Path),
                            ("--tls-server-name", "server_name", str)):  # the names of earlier versions
        t.add_argument(old, dest=dest, type=kind, help=argparse.SUPPRESS)
    t.add_argument("--backend", choices=("grpc", "openai"), default="grpc",
                   help="grpc (vlm.v1) or openai: streaming chat completions with data-URL images to any "
                        "OpenAI-compatible server (--target is then its URL, e.g. http://127.0.0.1:8000); "
                        "--compare entries may also say openai:URL")
    t.add_argument("--api-key", help="sent as 'authorization: Bearer KEY' (HTTP header or gRPC metadata)")
    t.add_argument("--model", help="openai: the model name to request (default: the first of GET /v1/models)")
    lo = p.add_argument_group("load")
    lo.add_argument("--request-rate", type=float, nargs="+", default=[float("inf")],
                    help="requests/s, Poisson arrivals; inf = all at once; several values = a sweep")
    lo.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrival times (1 = Poisson)")
    lo.add_argument("--max-concurrency", type=int, nargs="+", default=[None], help="cap(s) on requests in flight")
    lo.add_argument("--num-prompts", type=int, help="measured requests per run")
    lo.add_argument("--duration", type=float, help="seconds to keep sending (the request pool is cycled)")
    lo.add_argument("--num-warmup", type=int, default=2, help="unmeasured requests sent first")
    lo.add_argument("--warmup-concurrency", type=int, default=1,
                    help="warm-up requests in flight at once (give the run's --max-concurrency for load tests)")
    lo.add_argument("--timeout", type=float, default=120.0, help="per-request deadline, seconds")
    lo.add_argument("--temperature", type=float, help="unset = greedy")
    lo.add_argument("--no-ignore-eos", action="store_true", help="let EOS end a request before max tokens")
    lo.add_argument("--logprobs", action="store_true",
                    help="ask for each token's logprob on both backends: over HTTP a token that decodes to no text "
                         "(a special token, as random weights emit) sends no content, only its logprobs entry")
    d = p.add_argument_group("dataset")
    d.add_argument("--dataset", choices=("synthetic", "folder", "jsonl", "video_folder"), default="synthetic")
    d.add_argument("--dataset-path", type=Path, help="image folder, video folder or JSONL file")
    d.add_argument("--videos-per-request", type=int, default=0, help="synthetic clips per request (PyAV-made)")
    d.add_argument("--video-seconds", type=float, default=10.0, help="length of each synthetic clip")
    d.add_argument("--video-resolution", default="1280x720", help="WxH of synthetic clips")
    d.add_argument("--video-fps", type=float, default=30.0, help="frame rate of synthetic clips")
    d.add_argument("--video-format", choices=("mp4", "webm", "mov"), default="mp4", help="H.264 MP4/MOV, VP9 WebM")
    d.add_argument("--video-sample-fps", type=float, help="sampling fps asked of the server (default: its own)")
    d.add_argument("--unique-videos", action="store_true", help="a different clip per request (no cache hits)")
    d.add_argument("--images-per-request", default="1", help="N or A-B")
    d.add_argument("--image-resolution", default="720p", help="360p|720p|1080p|4k, HxW, HxW:HxW range, a,b list")
    d.add_argument("--image-content", choices=("noise", "blank"), default="noise")
    d.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg")
    d.add_argument("--input-len", default="64", help="text tokens per request: N or A-B")
    d.add_argument("--output-len", default="16", help="output tokens (min_tokens = max_tokens): N or A-B")
    d.add_argument("--tokenizer", type=Path, help="model dir or tokenizer.json for exact text lengths")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--pool-size", type=int, default=256, help="requests built when only --duration bounds the run")
    o = p.add_argument_group("output")
    o.add_argument("--goodput", nargs="+", metavar="KEY:MS", help="SLOs, e.g. ttft:500 tpot:50 e2e:3000")
    o.add_argument("--result-dir", type=Path, help="default bench-results/<UTC time>")
    o.add_argument("--label", default="", help="prefix of run labels")
    o.add_argument("--no-plots", action="store_true")
    c = p.add_argument_group("compare")
    c.add_argument("--compare", nargs="+", metavar="TARGET|serve:FLAGS", help="servers to compare, interleaved")
    c.add_argument("--compare-labels", nargs="+")
    c.add_argument("--compare-rounds", type=int, default=3)
    c.add_argument("--compare-launch", choices=("parallel", "sequential"), default="sequential",
                   help="launch specs side by side (interleaved) or one after another")
    c.add_argument("--server-ready-timeout", type=float, default=900.0)
    pe = p.add_argument_group("peer")
    pe.add_argument("--peer", choices=("transformers",), help="also run the dataset through transformers generate")
    pe.add_argument("--peer-model", help="HF-format model directory for the peer")
    pe.add_argument("--peer-device", default="auto")
    pe.add_argument("--peer-dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    pe.add_argument("--peer-num-prompts", type=int, help="peer requests (default: all measured requests)")
    return p


def _dataset_spec(args, count: int) -> DatasetSpec:
    return DatasetSpec(kind=args.dataset, path=args.dataset_path, num_requests=count, seed=args.seed,
                       images_per_request=parse_range(args.images_per_request), resolution=args.image_resolution,
                       image_content=args.image_content, image_format=args.image_format,
                       input_len=parse_range(args.input_len), output_len=parse_range(args.output_len),
                       tokenizer_path=args.tokenizer, videos_per_request=args.videos_per_request,
                       video_seconds=args.video_seconds, video_resolution=args.video_resolution,
                       video_fps=args.video_fps, video_format=args.video_format,
                       video_sample_fps=args.video_sample_fps, unique_videos=args.unique_videos)


def _plans(args) -> list[LoadPlan]:
    return [LoadPlan(request_rate=rate, burstiness=args.burstiness, max_concurrency=conc,
                     num_prompts=args.num_prompts, duration_s=args.duration, timeout_s=args.timeout or None,
                     seed=args.seed, ignore_eos=not args.no_ignore_eos, temperature=args.temperature,
                     logprobs=args.logprobs,
                     warmup_concurrency=args.warmup_concurrency)
            for rate in args.request_rate for conc in args.max_concurrency]


def _dev_ca(args, address: str) -> Path | None:
    """The CA a TLS target is checked against: --ca, else the dev CA of --state-dir when there is one (as the
    other client commands do), else None (the system roots)."""
    if args.ca is not None or args.insecure or (address.startswith("unix:") and args.cert is None):
        return args.ca
    dev = Path(args.state_dir) / "tls" / "ca.crt"
    return dev if dev.is_file() else None


def _target(args, address: str | None) -> Target:
    address = address or ""
    return Target(address, insecure=args.insecure, ca=_dev_ca(args, address), cert=args.cert, key=args.key,
                  server_name=args.server_name, backend=args.backend, api_key=args.api_key, model=args.model)


def _default_target(args) -> None:
    """--uds becomes a unix: target; with no target, comparison or peer at all, the local server."""
    if args.uds is not None:
        if args.target:
            raise ValueError("--target and --uds exclude each other")
        args.target = f"unix:{Path(args.uds).resolve()}"
    if not (args.target or args.compare or args.peer):
        args.target = DEFAULT_TARGET


def _validate(args) -> None:
    _default_target(args)
    for flag in ("ca", "cert", "key"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"--{flag} {path}: no such file")
    if args.target and args.compare:
        raise ValueError("--target and --compare exclude each other (list the target in --compare)")
    if args.compare and len(_plans(args)) > 1:
        raise ValueError("--compare takes one --request-rate and one --max-concurrency")
    if args.peer and not args.peer_model:
        raise ValueError("--peer transformers needs --peer-model")
    if args.burstiness <= 0 or any(r <= 0 for r in args.request_rate):
        raise ValueError("--request-rate and --burstiness must be positive")
    if args.num_warmup < 0 or args.warmup_concurrency < 1:
        raise ValueError("--num-warmup must be >= 0 and --warmup-concurrency >= 1")
    parse_goodput(args.goodput)


def _fresh_points(args, count: int, first: list) -> list[list]:
    """The measured requests of each sweep point. Synthetic images get a new seed per point, so no point meets
    vision or prefix caches that an earlier point warmed; a folder/JSONL dataset cannot, and is reused (said once)."""
    n_points = len(_plans(args))
    if n_points == 1 or args.compare:
        return [first]
    if args.dataset != "synthetic":
        print(f"note: the {n_points} sweep points reuse the {args.dataset} dataset's images: after the first point "
              "the server's vision and prefix caches are warm for them", file=sys.stderr)
        return [first] * n_points
    points = [first]
    for k in range(1, n_points):  # seeds far from the warm-up and from each other
        spec = dataclasses.replace(_dataset_spec(args, count), seed=args.seed + 1000 * k)
        points.append(build_dataset(spec))
    return points


async def _measure(args, per_point: list[list], warm, result_dir: Path) -> list[Run]:
    prefix = f"{args.label}:" if args.label else ""
    if args.compare:
        labels = compare_labels(args.compare, args.compare_labels)
        return await compare(args.compare, labels, _target(args, None), per_point[0], warm, _plans(args)[0],
                             args.compare_rounds, args.compare_launch, result_dir, args.server_ready_timeout)
    if args.target:
        return await bench_target(_target(args, args.target), per_point, warm, _plans(args), prefix)
    return []


def _peer_run(args, measured, warm) -> Run:
    from vlm_service.bench.peer import run_peer

    todo = measured[: args.peer_num_prompts] if args.peer_num_prompts else measured
    results, duration = run_peer(args.peer_model, todo, warm[:1], args.peer_device, args.peer_dtype)
    return Run("peer:transformers", results, duration, {"peer_model": args.peer_model})


def run(args) -> dict:
    """Everything after parsing; returns the summary dict that summary.json holds."""
    _validate(args)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    result_dir = args.result_dir or Path("bench-results") / stamp
    result_dir.mkdir(parents=True, exist_ok=True)
    count = args.num_prompts or args.pool_size
    dataset = build_dataset(_dataset_spec(args, count + args.num_warmup))
    measured, warm = dataset[:count], dataset[count:]
    per_point = _fresh_points(args, count, measured)
    runs = asyncio.run(_measure(args, per_point, warm, result_dir))
    if args.peer:
        runs.append(_peer_run(args, measured, warm))
    return _report(args, runs, result_dir)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _report(args, runs: list[Run], result_dir: Path) -> dict:
    slos = parse_goodput(args.goodput)
    named, entries = [], []
    for r in runs:
        metrics = summarize(r.results, r.duration_s, slos)
        report.write_requests(result_dir, r.label, r.results)
        print(report.format_run(r.label, metrics))
        named.append((r.label, metrics))
        entries.append({"label": r.label, "metrics": metrics, **r.extra})
    extra = {}
    if len(named) > 1 and (args.compare or args.peer):
        order = named[-1:] + named[:-1] if args.peer else named  # the peer is the baseline when present
        table, rows = report.ratio_table(order)
        print(f"\nratios against {order[0][0]}:\n{table}")
        extra["ratios"] = {"baseline": order[0][0], "rows": rows}
    if not args.no_plots and runs and not _have_matplotlib():
        print("note: no plots (matplotlib is not installed: pip install 'vlm-service[bench]'; --no-plots hides "
              "this note)", file=sys.stderr)
    elif not args.no_plots and runs:
        from vlm_service.bench import plots

        extra["plots"] = [str(p) for p in plots.write_all(result_dir, [(r.label, r.results, m)
                                                                       for r, (_, m) in zip(runs, named)])]
    path = report.write_summary(result_dir, vars(args), entries, extra)
    print(f"\nresults in {result_dir} ({path.name})")
    return {"runs": entries, **extra}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vlm-service bench ARGS` (the CLI passes ARGS) and of benchmarks/ttft.py."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"vlm-service bench: error: {e}", file=sys.stderr)
        return 2
    completed = sum(r["metrics"]["completed"] for r in summary["runs"])
    return 0 if completed or not summary["runs"] else 1
