"""Soak: thousands of requests with unique random images over a Unix socket against the real server (demo model).

Measures the server process before (after a warm-up) and after the run: RSS, open fds, threads, KV blocks in use and
the request maps (ids tracked by the engine, reservations, streams in flight). Each must return to within 5 % of its
baseline (counts that are 0 must return to 0). Writes the numbers as JSON.

    python benchmarks/soak.py --requests 5000 --out soak.json

The server runs in this process (so the engine can be inspected directly); the client is a grpc.aio channel over the
socket with `--concurrency` requests in flight. Exit code 0 when everything returned to baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.config import Config, EngineConfig, LimitsConfig, ModelConfig, ServerConfig, TLSConfig
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: the test harness lives in tests/
from tests.server_harness import running_server  # noqa: E402

TOLERANCE = 0.05


def soak_config(state_dir: Path, uds: Path) -> Config:
    """Demo model on CPU, UDS only, a small vision cache (it fills up during the warm-up, then stays full)."""
    return Config(model=ModelConfig(model="demo", device="cpu", dtype="float32", vit_attention_backend="sdpa"),
                  engine=EngineConfig(num_blocks=256, max_num_seqs=16, cuda_graphs=False, vision_cache_bytes=4 << 20),
                  server=ServerConfig(uds=uds, tcp=False, state_dir=state_dir, tls=TLSConfig(insecure=True),
                                      limits=LimitsConfig(max_images_per_request=2), drain_timeout_s=10))


def _image(rng: random.Random) -> bytes:
    """A unique PNG of random pixels, 16-96 px a side."""
    import io

    from PIL import Image

    w, h = rng.randint(16, 96), rng.randint(16, 96)
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _request(rng: random.Random, i: int) -> vlm_pb2.GenerateRequest:
    images = [(_image(rng), "image/png") for _ in range(rng.choice((1, 1, 2)))]
    return build_request(f"request {i}: what is in the picture?", images, request_id=f"soak-{i}",
                         max_tokens=rng.randint(1, 8), temperature=rng.choice((0.0, 0.7)), seed=i % (1 << 32))


async def _one(stub, request, cancel: bool) -> str:
    call = stub.Generate(request, timeout=120)
    try:
        async for resp in call:
            if cancel:  # some clients leave mid-stream: their state must be freed too
                call.cancel()
                return "CANCELLED"
            if resp.HasField("complete"):
                return "OK"
        return "NO_COMPLETE"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def _drive(target: str, n: int, concurrency: int, seed: int, start: int = 0) -> dict:
    rng, sem, outcomes = random.Random(seed), asyncio.Semaphore(concurrency), {}

    async def task(i, request, cancel):
        async with sem:
            status = await _one(stub, request, cancel)
        outcomes[status] = outcomes.get(status, 0) + 1

    async with grpc.aio.insecure_channel(target) as channel:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        pending = set()
        for i in range(start, start + n):
            if len(pending) >= 4 * concurrency:  # build requests (and their images) as we go
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(asyncio.ensure_future(task(i, _request(rng, i), cancel=rng.random() < 0.05)))
        await asyncio.gather(*pending)
    return outcomes


def snapshot(srv) -> dict:
    """What must return to baseline, read from this process and the server's engine."""
    gc.collect()
    proc, s = psutil.Process(), srv.server.runtime.engine.stats()
    return {"rss_mb": round(proc.memory_info().rss / 2 ** 20, 1), "open_fds": proc.num_fds(),
            "threads": proc.num_threads(), "kv_blocks_used": s.kv_blocks_used,
            "tracked_requests": s.tracked_requests, "reserved": s.reserved, "running": s.running,
            "waiting": s.waiting, "streams_in_flight": srv.server.servicer.inflight}


def _settle(srv, timeout: float = 10.0) -> dict:
    """Snapshot once the engine is idle (or after `timeout`)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        snap = snapshot(srv)
        if snap["tracked_requests"] == snap["kv_blocks_used"] == snap["streams_in_flight"] == 0:
            return snap
        time.sleep(0.05)
    return snapshot(srv)


def within(base: dict, after: dict, tolerance: float = TOLERANCE) -> dict:
    """Per key: True when `after` is at most base * (1 + tolerance) (exactly base when base is 0)."""
    return {k: after[k] <= base[k] * (1 + tolerance) for k in base}


def run_soak(requests: int, concurrency: int = 16, warmup: int = 300, seed: int = 0,
             state_dir: Path | None = None) -> dict:
    """Warm up, take the baseline, run `requests`, settle, compare. Returns the JSON-able report."""
    state_dir = Path(state_dir or tempfile.mkdtemp(prefix="vlm-soak-state-"))
    with tempfile.TemporaryDirectory(prefix="vlm-soak-") as sock_dir:
        with running_server(soak_config(state_dir, Path(sock_dir) / "vlm.sock")) as srv:
            asyncio.run(_drive(srv.target, warmup, concurrency, seed + 1, start=10 ** 9))
            base = _settle(srv)
            start = time.monotonic()
            outcomes = asyncio.run(_drive(srv.target, requests, concurrency, seed))
            elapsed = time.monotonic() - start
            after = _settle(srv)
    ok = within(base, after)
    return {"requests": requests, "warmup": warmup, "concurrency": concurrency, "seconds": round(elapsed, 1),
            "requests_per_s": round(requests / elapsed, 1), "outcomes": outcomes, "baseline": base, "after": after,
            "within_5_percent": ok, "passed": all(ok.values()) and set(outcomes) <= {"OK", "CANCELLED"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", type=Path, help="where the demo checkpoint is cached (default: a temp dir)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    args = p.parse_args(argv)
    report = run_soak(args.requests, args.concurrency, args.warmup, args.seed, args.state_dir)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
