"""A visual item laid out in several prompt runs (a Qwen3-VL video: one run per frame group, text between them):
the engine places its embeddings run by run, through chunked prefill, and encodes it once even when it is too big
for the vision cache; its blocks' prefix keys follow the item's rows."""

from __future__ import annotations

import hashlib

import pytest
import torch
from engine_helpers import IMAGE_PAD, PATCH_DIM, VISION_END, VISION_START, ToyTokenizer, ToyVLM, oracle_greedy, \
    run_to_completion, text

from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.engine.sequence import visual_spans
from vlm_service.processor.positions import VisualRun, run_positions
from vlm_service.types import ProcessedInput, ProcessedVisual, SamplingParams


def video_input(groups: int = 3, seed: int = 0) -> ProcessedInput:
    """text, then `groups` runs of 4 video pads (grid (groups, 4, 4)), each wrapped and led by 2 'timestamp' ids."""
    ids, runs = text(seed, 5), []
    for g in range(groups):
        ids += text(seed + 10 + g, 2) + [VISION_START]
        runs.append(VisualRun(len(ids), 1, 2, 2))
        ids += [IMAGE_PAD] * 4 + [VISION_END]
    ids += text(seed + 50, 3)
    gen = torch.Generator().manual_seed(seed)
    pix = torch.randn(groups * 16, PATCH_DIM, generator=gen)
    video = ProcessedVisual(pix, (groups, 4, 4), hashlib.sha256(b"v%d" % seed).hexdigest(), runs[0].offset,
                           4 * groups, kind="video", runs=tuple((r.offset, 4) for r in runs))
    positions, delta = run_positions(len(ids), runs)
    return ProcessedInput(ids, [video], positions, delta)


def _oracle(model, inp):
    """oracle_greedy places an item's rows on [offset, offset + num_tokens): give it one contiguous fake item per
    run with that run's rows, which is what the spans must amount to."""
    video = inp.visuals[0]
    per_run = []
    for off, n, start in video.prompt_runs():
        rows = video.pixel_values[start * 4:(start + n) * 4]  # 4 patches per merged token
        per_run.append(ProcessedVisual(rows, (1, 4, 4), f"{video.content_hash}-{start}", off, n))
    return oracle_greedy(model, ProcessedInput(inp.input_ids, per_run, inp.positions, inp.mrope_delta), 6)


@pytest.mark.parametrize("cache_bytes", [1 << 20, 1])
def test_multi_run_video_matches_the_oracle_and_is_encoded_once(cache_bytes):
    model = ToyVLM(seed=3)
    inp = video_input()
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(num_blocks=64, block_size=4, max_batched_tokens=5,
                                                           vision_cache_bytes=cache_bytes, cuda_graphs=False), "cpu")
    out = run_to_completion(engine, [("v", inp, SamplingParams(max_tokens=6, ignore_eos=True))])
    assert out["v"][0] == _oracle(ToyVLM(seed=3), inp)
    assert model.encode_calls == 1  # 7 prefill chunks, one encode (cache or the oversize stash)
    assert not engine.runner._oversize  # dropped once the prefill is over


def test_spans_carry_rows_and_item_and_prefix_keys_differ_by_row():
    inp = video_input()
    spans = visual_spans(inp)
    assert [(s.offset, s.num_tokens, s.embed_start, s.item) for s in spans] == \
        [(off, 4, 4 * k, 0) for k, (off, _, _) in enumerate(inp.visuals[0].prompt_runs())]
    from vlm_service.engine.sequence import Sequence

    seq = Sequence("r", list(inp.input_ids), SamplingParams(), 4, spans, inp)
    keys = [seq.block_content(i, 4) for i in range(len(inp.input_ids) // 4)]
    video_keys = [k[1] for k in keys if k[1]]
    assert len(set(video_keys)) == len(video_keys)  # each block names the rows it holds
