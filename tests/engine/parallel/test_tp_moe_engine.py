"""MoE tensor parallelism in-process (this test process is rank 0, the workers real processes over gloo): on a tiny
Qwen3-VL-MoE checkpoint made with transformers' classes (8 experts, 2 per token, one dense layer; 4 q / 2 KV
heads, so at TP=4 a KV head is replicated on two ranks), TP=2 and TP=4 give TP=1's greedy tokens and logits
within 1e-4 (fp32) for a text-only and a one-image request, from each expert layout of the checkpoint; every
block is free afterwards. `vlm-service serve` refuses a moe_intermediate_size that does not divide by the TP size
with that message, exits non-zero and leaves no worker behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tp_helpers import chats, moe_checkpoint, record_logits, tp_config, tp_runtime

from vlm_service.demo.images import make_image
from vlm_service.types import SamplingParams


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tp-moe")


@pytest.fixture(scope="module")
def images():
    return [make_image(np.random.default_rng(s), 64, 96, "noise", "png").data for s in range(2)]


def generate(ckpt, size, root, images):
    """Greedy tokens of a text-only and a one-image request run together, and every logits tensor of the run."""
    with tp_runtime(tp_config(ckpt, size, root / "state")) as rt:
        eng = rt.engine.engine
        assert rt.model.spec.architecture == "Qwen3VLMoeForConditionalGeneration"
        seen = record_logits(eng)
        for i, msgs in enumerate(chats(images)[:2]):
            eng.add(str(i), rt.processor.process(msgs), SamplingParams(max_tokens=6, ignore_eos=True))
        tokens: dict[str, list[int]] = {}
        while eng.has_work():
            for out in eng.step():
                if hasattr(out, "token_ids"):
                    tokens.setdefault(out.request_id, []).extend(out.token_ids)
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks and not eng.requests
        return tokens, seen


@pytest.fixture(scope="module")
def reference(root, images):
    return generate(moe_checkpoint(root), 1, root, images)


@pytest.mark.parametrize("layout, size", [("fused", 2), ("fused", 4), ("per_expert", 2), ("hub", 2)])
def test_moe_tp_gives_tp1_tokens_and_logits(layout, size, reference, root, images):
    tokens1, logits1 = reference
    tokens, logits = generate(moe_checkpoint(root, layout), size, root, images)
    assert tokens == tokens1 and all(len(t) == 6 for t in tokens.values())
    assert len(set(map(tuple, tokens.values()))) > 1  # the two requests differ: the image reached the model
    assert len(logits) == len(logits1)
    for a, b in zip(logits, logits1):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group pgid still runs (Linux /proc; a zombie, unreaped where no init reaps, has exited)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _, pgrp = f.read().rsplit(") ", 1)[1].split()[:3]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def test_serve_refuses_a_moe_intermediate_size_that_does_not_divide(root, tmp_path):
    ckpt = tmp_path / "odd"
    shutil.copytree(moe_checkpoint(root), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["moe_intermediate_size"] = 47
    (ckpt / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "vlm_service.cli", "serve", "--model", str(ckpt), "--device", "cpu",
                             "--dtype", "float32", "--tensor-parallel-size", "2", "--port", "0", "--state-dir",
                             str(tmp_path / "s")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the spawned worker's too
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "moe_intermediate_size = 47 does not divide by --tensor-parallel-size 2" in out
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), "a tensor-parallel worker outlived the refused server"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, 9)
