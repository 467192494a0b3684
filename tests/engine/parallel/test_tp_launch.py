"""Ranks launched from outside, as torchrun or a LeaderWorkerSet starts them: `vlm-service serve` with RANK=1
becomes a worker, and rank 0 (this process, RANK=0 in its environment) joins it instead of spawning one; the
tokens are TP=1's and the worker exits 0 when rank 0 stops."""

from __future__ import annotations

import os
import subprocess
import sys

from tp_helpers import tiny_checkpoint, tp_config, tp_runtime

from vlm_service.engine.parallel.launch import free_port
from vlm_service.types import ChatMessage, SamplingParams


def _tokens(rt) -> list[int]:
    eng = rt.engine.engine
    eng.add("a", rt.processor.process((ChatMessage("user", ("count to ten",)),)),
            SamplingParams(max_tokens=6, ignore_eos=True))
    out = []
    while eng.has_work():
        out += [t for o in eng.step() if hasattr(o, "token_ids") for t in o.token_ids]
    return out


def test_torchrun_style_ranks(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path, "qwen2_5_vl")
    with tp_runtime(tp_config(ckpt, 1, tmp_path / "s")) as rt:
        want = _tokens(rt)
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port("127.0.0.1"))}
    worker = subprocess.Popen([sys.executable, "-m", "vlm_service.cli", "serve", "--model", str(ckpt), "--device",
                               "cpu", "--dtype", "float32", "--tensor-parallel-size", "2", "--num-blocks", "96",
                               "--block-size", "4", "--state-dir", str(tmp_path / "s")],
                              env={**os.environ, **env})
    try:
        for key, value in {**env, "RANK": "0", "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(key, value)
        with tp_runtime(tp_config(ckpt, 2, tmp_path / "s")) as rt:
            assert rt.extras["parallel"].procs == []  # joined, not spawned
            assert _tokens(rt) == want
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
