"""The engine with the piecewise prefill path (engine/prefill_graphs.py, its eager mode on the CPU): the same greedy
tokens as the plain forward on the demo checkpoints, through chunked prefills, mixed steps, images and the prefix
cache; steps over the max run the plain forward."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import ToyTokenizer, run_to_completion
from test_demo_model import _prompt

import vit_backends
from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.engine.prefill_graphs import PrefillGraphs
from vlm_service.types import SamplingParams


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen2_5_vl"])
def test_greedy_tokens_unchanged_with_the_piecewise_prefill(arch, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from vlm_service.demo.checkpoint import ensure_demo_model
    from vlm_service.models.loader import load_model

    path = ensure_demo_model(tmp_path_factory.mktemp("state"), arch)
    config = json.loads((path / "config.json").read_text())
    hf = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    model = load_model(path, torch.float32, "cpu", vit_backends.create("sdpa"))
    grids = [[(1, 6, 4)], [], [(1, 4, 4), (1, 4, 8)], [(1, 6, 4)], [(1, 8, 8)]]
    prompts = [_prompt(config, hf, g, s)[0] for s, g in enumerate(grids)]
    sp = SamplingParams(max_tokens=8, ignore_eos=True)
    runs, sizes = [], []
    for piecewise in (False, True):
        cfg = EngineConfig(block_size=4, num_blocks=256, max_num_seqs=8, max_batched_tokens=40)
        eng = LLMEngine(model, ToyTokenizer(), cfg, "cpu")
        if piecewise:
            pg = eng.runner.prefill_graphs = PrefillGraphs(eng.runner, 24, eager=True)
            run = pg.run
            pg.run = lambda ids, *a: sizes.append(ids.shape[0]) or run(ids, *a)
        res = run_to_completion(eng, [(str(i), p, sp) for i, p in enumerate(prompts)])
        again = run_to_completion(eng, [("again", prompts[0], sp)])["again"]
        assert again[2].usage.cached_tokens > 0
        runs.append([res[str(i)][0] for i in range(len(prompts))] + [again[0]])
    assert runs[0] == runs[1]
    assert sizes and max(sizes) <= 24  # steps of 25..40 tokens ran the plain forward
