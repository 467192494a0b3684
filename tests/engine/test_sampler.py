"""Sampler: greedy, filters, penalties, banned ids, seeded batch invariance, logprobs."""

import math

import torch

from vlm_service.engine.sampler import SampleRow, sample
from vlm_service.types import SamplingParams


def logits(b=4, v=50, seed=0):
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_top_k_1_matches_it():
    x = logits()
    greedy = sample(x, [SampleRow(SamplingParams(), 5) for _ in range(4)]).token_ids
    assert greedy == x.argmax(-1).tolist()
    topk1 = sample(x, [SampleRow(SamplingParams(temperature=1.0, top_k=1, seed=i), 5) for i in range(4)])
    assert topk1.token_ids == greedy


def test_tiny_top_p_and_high_min_p_keep_only_the_best_token():
    x = logits()
    best = x.argmax(-1).tolist()
    for p in (SamplingParams(temperature=1.0, top_p=1e-6, seed=3), SamplingParams(temperature=1.0, min_p=0.999, seed=3)):
        assert sample(x, [SampleRow(p, 9) for _ in range(4)]).token_ids == best


def test_top_k_draws_stay_in_the_top_k():
    x = logits(1, 50)
    top = set(x[0].topk(3).indices.tolist())
    for s in range(40):
        tok = sample(x, [SampleRow(SamplingParams(temperature=2.0, top_k=3, seed=s), 1)]).token_ids[0]
        assert tok in top


def test_seeded_rows_do_not_depend_on_the_batch():
    x = logits(16, 64)
    rows = [SampleRow(SamplingParams(temperature=1.0, seed=100 + i), 7 + i) for i in range(16)]
    full = sample(x, rows).token_ids
    alone = [sample(x[i:i + 1], [rows[i]]).token_ids[0] for i in range(16)]
    mixed = sample(x[[3, 0, 9]], [rows[3], rows[0], rows[9]]).token_ids
    assert full == alone and mixed == [full[3], full[0], full[9]]
    other_pos = sample(x, [SampleRow(r.params, r.position + 1) for r in rows]).token_ids
    assert other_pos != full  # the position is part of the noise


def test_unseeded_rows_use_their_own_generator():
    x = logits(2, 64)
    draws = []
    for _ in range(2):
        gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
        rows = [SampleRow(SamplingParams(temperature=1.0), 0, generator=g) for g in gens]
        draws.append([sample(x, rows).token_ids for _ in range(5)])
    assert draws[0] == draws[1]


def test_repetition_penalty_and_banned_ids():
    x = torch.zeros(1, 10)
    x[0, 3], x[0, 4] = 2.0, 1.9
    assert sample(x, [SampleRow(SamplingParams(), 0)]).token_ids == [3]
    pen = SamplingParams(repetition_penalty=1.2)
    assert sample(x, [SampleRow(pen, 0, seen_ids=[3])]).token_ids == [4]
    assert sample(x, [SampleRow(SamplingParams(), 0, banned_ids=(3, 4))]).token_ids not in ([3], [4])


def test_banned_ids_apply_to_their_own_row_only():
    x = torch.zeros(3, 10)
    x[:, 3], x[:, 4], x[:, 5] = 3.0, 2.0, 1.0  # every row prefers 3, then 4, then 5
    rows = [SampleRow(SamplingParams(), 0, banned_ids=(3,)), SampleRow(SamplingParams(), 0),
            SampleRow(SamplingParams(), 0, banned_ids=(3, 4))]
    assert sample(x, rows).token_ids == [4, 3, 5]


def test_logprobs_are_of_the_final_distribution():
    x = logits(1, 20)
    p = SamplingParams(temperature=0.5, top_k=2, seed=1, logprobs=True, top_logprobs=3)
    lp = sample(x, [SampleRow(p, 0)]).logprobs[0]
    top2 = x[0].topk(2).indices.tolist()
    assert lp.token_id in top2
    assert [t for t, _ in lp.top[:2]] == top2 and lp.top[2][1] == -math.inf
    assert math.isclose(sum(math.exp(v) for _, v in lp.top[:2]), 1.0, rel_tol=1e-5)
    assert sample(x, [SampleRow(SamplingParams(), 0)]).logprobs == [None]
