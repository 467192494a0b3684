"""Tensor parallelism through the served API: the real server (mTLS on loopback) at TP=2 and TP=4 streams the
greedy tokens and logprobs a TP=1 engine computes on the same checkpoint (both dense families, KV heads fewer
than ranks at TP=4, and the MoE family at TP=2, its experts split along their intermediate dim); a `vlm-service
serve --tensor-parallel-size 2` subprocess whose worker is killed reports NOT_SERVING and exits non-zero within
10 s, and SIGTERM stops every rank with exit code 0."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "parallel"))
from tp_helpers import tiny_checkpoint, tp_config, tp_runtime  # noqa: E402

from vlm_service._proto.vlm.v1 import vlm_pb2_grpc  # noqa: E402
from vlm_service.demo.images import make_image  # noqa: E402
from vlm_service.client import build_request  # noqa: E402
from vlm_service.config import ServerConfig, TLSConfig  # noqa: E402
from tests.server_harness import free_port, running_server, server_subprocess  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402
from vlm_service.types import ChatMessage, ImageInput, SamplingParams  # noqa: E402

MAX_TOKENS, TOP = 5, 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tp-e2e")


@pytest.fixture(scope="module")
def image():
    return make_image(np.random.default_rng(7), 64, 96, "noise", "png").data


def _prompts(image):
    return [("write a poem about the sea", ()), ("what is in the picture?", (image,))]


def reference(ckpt, root, image):
    """TP=1 in-process: per prompt, [(token, logprob, top)] of a greedy run."""
    out = []
    with tp_runtime(tp_config(ckpt, 1, root / "state")) as rt:
        eng = rt.engine.engine
        for i, (text, images) in enumerate(_prompts(image)):
            msg = ChatMessage("user", (*[ImageInput(b, "image/png") for b in images], text))
            eng.add(str(i), rt.processor.process((msg,)),
                    SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=True, top_logprobs=TOP))
        rows: dict[str, list] = {}
        while eng.has_work():
            for o in eng.step():
                if hasattr(o, "token_ids"):
                    rows.setdefault(o.request_id, []).extend(
                        (lp.token_id, lp.logprob, [v for _, v in lp.top]) for lp in o.logprobs)
        return [rows[str(i)] for i in range(len(rows))]


def served(srv, image):
    stub = vlm_pb2_grpc.VisionLanguageServiceStub(srv.channel())
    out = []
    for text, images in _prompts(image):
        req = build_request(text, images=[(b, "image/png") for b in images], max_tokens=MAX_TOKENS,
                            ignore_eos=True, logprobs=True, top_logprobs=TOP)
        rows = []
        for resp in stub.Generate(req, timeout=120):
            if resp.HasField("chunk"):
                rows += [(lp.token_id, lp.logprob, [t.logprob for t in lp.top]) for lp in resp.chunk.logprobs]
        out.append(rows)
    return out


@pytest.mark.parametrize("arch, size", [("qwen3_vl", 2), ("qwen3_vl", 4), ("qwen2_5_vl", 2), ("qwen2_5_vl", 4),
                                        ("qwen3_vl_moe", 2)])
def test_served_tp_matches_tp1(arch, size, root, image, pki):
    pki, live = pki
    ckpt = tiny_checkpoint(root, arch)
    want = reference(ckpt, root, image)
    cfg = tp_config(ckpt, size, root / "state")
    tls = TLSConfig(cert=live / "server.crt", key=live / "server.key", client_ca=pki.ca.cert)
    cfg = type(cfg)(model=cfg.model, engine=cfg.engine, parallel=cfg.parallel,
                    server=ServerConfig(port=0, state_dir=root / "state", tls=tls, drain_timeout_s=10))
    creds = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
    with running_server(cfg, credentials=creds, warmup=False) as srv:
        got = served(srv, image)
    assert [[t for t, _, _ in r] for r in got] == [[t for t, _, _ in r] for r in want]
    assert all(len(r) == MAX_TOKENS for r in got)
    for g, w in zip(got, want):
        for (_, lp, top), (_, lp1, top1) in zip(g, w):
            assert abs(lp - lp1) < 1e-4 and np.allclose(top, top1, atol=1e-4, rtol=0)


def _children(pid: int) -> list[int]:
    """Child processes of pid, whichever of its threads started them (Linux /proc)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")  # a zombie has exited
    except FileNotFoundError:
        return True


def _serve(root, state_dir, tmp_path):
    ckpt = tiny_checkpoint(root, "qwen3_vl")
    port = free_port()
    args = ["--model", str(ckpt), "--device", "cpu", "--dtype", "float32", "--port", str(port),
            "--state-dir", str(state_dir), "--num-blocks", "64", "--block-size", "4", "--no-cuda-graphs",
            "--warmup-image-side", "0", "--tensor-parallel-size", "2", "--vit-attention-backend", "sdpa"]
    from vlm_service.server.pki import ensure_dev_pki

    ca, _ = ensure_dev_pki(state_dir / "tls")
    return server_subprocess(args, f"127.0.0.1:{port}", channel_credentials(ca.cert), log_path=tmp_path / "log")


def test_killed_worker_fails_health_and_exits_nonzero_within_10s(root, state_dir, tmp_path):
    with _serve(root, state_dir, tmp_path) as srv:
        workers = _children(srv.process.pid)
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        killed, states = time.monotonic(), []
        while srv.process.poll() is None and time.monotonic() - killed < 10:
            try:
                states.append(srv.health(timeout=1.0))
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        code = srv.process.wait(max(10 - (time.monotonic() - killed), 0.1))
        assert time.monotonic() - killed < 10
        assert code != 0 and health_pb2.HealthCheckResponse.NOT_SERVING in states, (tmp_path / "log").read_text()


def test_sigterm_drains_and_stops_every_rank(root, state_dir, tmp_path):
    with _serve(root, state_dir, tmp_path) as srv:
        workers = _children(srv.process.pid)
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(srv.channel())
        stream = stub.Generate(build_request("tell", max_tokens=40, min_tokens=40), timeout=120)
        first = next(stream)
        srv.process.send_signal(signal.SIGTERM)
        rest = list(stream)
        tokens = sum(len(r.chunk.token_ids) for r in [first, *rest] if r.HasField("chunk"))
        assert tokens == 40 and rest[-1].HasField("complete")
        assert srv.process.wait(60) == 0, (tmp_path / "log").read_text()[-3000:]
        assert workers and all(_gone(w) for w in workers)
