"""The engine on the real demo checkpoints: batched, chunked, prefix-cached greedy tokens equal transformers'."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch
from engine_helpers import run_to_completion

import vit_backends
from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.types import ProcessedInput, ProcessedVisual, SamplingParams


class _NoTok:
    def decode(self, ids, skip_special_tokens=True):
        return ""


def _prompt(config, hf, grids, seed):
    """ids with one image per grid, then ProcessedInput (positions from transformers) and HF generate kwargs."""
    ids = [5, 17 + seed, 300]
    imgs = []
    patch = config["vision_config"]["patch_size"]
    for j, grid in enumerate(grids):
        n = grid[0] * grid[1] * grid[2] // 4
        ids.append(config["vision_start_token_id"])
        pv = torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * patch * patch,
                         generator=torch.Generator().manual_seed(seed * 10 + j))
        imgs.append(ProcessedVisual(pv, grid, hashlib.sha256(f"{seed}-{j}".encode()).hexdigest(), len(ids), n))
        ids += [config["image_token_id"]] * n + [config["vision_end_token_id"], 42 + j]
    ids += [99, 7, 11 + seed]
    t_ids = torch.tensor(ids)[None]
    types = (t_ids == config["image_token_id"]).long()
    kw = dict(input_ids=t_ids, mm_token_type_ids=types)
    if imgs:
        kw.update(pixel_values=torch.cat([i.pixel_values for i in imgs]), image_grid_thw=torch.tensor(grids))
    with torch.no_grad():
        pos, delta = hf.model.get_rope_index(t_ids, types, image_grid_thw=kw.get("image_grid_thw"))
    return ProcessedInput(ids, imgs, pos[:, 0], int(delta)), kw


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen2_5_vl"])
def test_engine_matches_transformers_on_the_demo_model(arch, tmp_path_factory):
    if importlib.util.find_spec(f"vlm_service.models.{arch}") is None:
        pytest.skip(f"vlm_service.models.{arch} not written yet")
    from transformers import AutoModelForImageTextToText

    from vlm_service.demo.checkpoint import ensure_demo_model
    from vlm_service.models.loader import load_model

    path = ensure_demo_model(tmp_path_factory.mktemp("state"), arch)
    config = json.loads((path / "config.json").read_text())
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    ours = load_model(path, torch.float32, "cpu", vit_backends.create("sdpa"))
    prompts = [_prompt(config, hf, g, s) for s, g in enumerate([[(1, 6, 4)], [], [(1, 4, 4), (1, 4, 8)], [(1, 6, 4)]])]
    refs = []
    with torch.no_grad():
        for _, kw in prompts:
            out = hf.generate(**kw, max_new_tokens=6, do_sample=False, min_new_tokens=6)
            refs.append(out[0, kw["input_ids"].shape[1]:].tolist())
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_seqs=8, max_batched_tokens=13)
    eng = LLMEngine(ours, _NoTok(), cfg, "cpu")
    sp = SamplingParams(max_tokens=6, min_tokens=6)
    got = run_to_completion(eng, [(str(i), p, sp) for i, (p, _) in enumerate(prompts)])
    assert [got[str(i)][0] for i in range(len(prompts))] == refs
    again = run_to_completion(eng, [("again", prompts[0][0], sp)])["again"]
    assert again[0] == refs[0] and again[2].usage.cached_tokens > 0
