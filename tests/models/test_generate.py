"""DenseKVContext and the generate loop: chunked prefill, seeded sampling, min_tokens and EOS."""

from __future__ import annotations

import pytest
import torch
from qwen3_tiny_helpers import make_prompt

from vlm_service.models.common import MultimodalEmbeds
from tests.models.reference_generate import DenseKVContext, generate, multimodal_embeds


def test_chunked_prefill_matches_one_shot(our_qwen3):
    ids, _, pv, grid = make_prompt([4, (4, 6), 6], seed=7)
    pos = torch.arange(ids.shape[0]).expand(3, -1)
    mm = multimodal_embeds(our_qwen3, ids, pv, grid)
    whole = our_qwen3.forward(ids, pos, DenseKVContext.for_model(our_qwen3, 64), mm)
    ctx, cut, parts = DenseKVContext.for_model(our_qwen3, 64), 9, []
    for sl in (slice(0, cut), slice(cut, None)):
        mask = mm.mask[sl]
        first = int(mm.mask[:sl.start or 0].sum())
        n = int(mask.sum())
        chunk_mm = MultimodalEmbeds(mm.embeds[first:first + n], mask, [d[first:first + n] for d in mm.deepstack])
        parts.append(our_qwen3.forward(ids[sl], pos[:, sl], ctx, chunk_mm))
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible(our_qwen3):
    ids, _, _, _ = make_prompt([10], seed=1)
    pos = torch.arange(10).expand(3, -1)
    run = lambda seed: generate(our_qwen3, ids, pos, max_new_tokens=12, temperature=1.5, seed=seed,  # noqa: E731
                                eos_token_ids=())
    assert run(5) == run(5)
    assert run(5) != run(6)
    assert run(5) != generate(our_qwen3, ids, pos, max_new_tokens=12, eos_token_ids=())


def test_eos_stops_and_min_tokens_suppresses(our_qwen3):
    ids, _, _, _ = make_prompt([10], seed=2)
    pos = torch.arange(10).expand(3, -1)
    greedy = generate(our_qwen3, ids, pos, max_new_tokens=6, eos_token_ids=())
    eos = greedy[2]
    stopped = generate(our_qwen3, ids, pos, max_new_tokens=6, eos_token_ids=(eos,))
    assert stopped[-1] == eos and len(stopped) == greedy.index(eos) + 1
    held = generate(our_qwen3, ids, pos, max_new_tokens=6, eos_token_ids=(eos,), min_tokens=6)
    assert len(held) == 6 and eos not in held


def test_context_overflow_and_pad_mismatch(our_qwen3):
    ctx = DenseKVContext.for_model(our_qwen3, 4)
    with pytest.raises(ValueError, match="full"):
        our_qwen3.forward(torch.arange(5), torch.arange(5).expand(3, -1), ctx)
    ids, _, pv, grid = make_prompt([2, (4, 4), 2])
    with pytest.raises(ValueError, match="image-pad tokens"):
        multimodal_embeds(our_qwen3, ids[:-4], pv, grid)
