"""Seeded Gumbel-max sampling: Triton (interpreted on CPU) picks the same tokens as kernels.reference."""

import math

import pytest
import torch

from kernels import reference, sampling


def _logits(b, v, seed=0, device="cpu"):
    return (torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 2).to(device)


def test_murmur3_matches_a_plain_python_implementation():
    def murmur(seed, words):
        rotl = lambda x, r: ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF  # noqa: E731
        h = seed
        for w in words:
            k = rotl((w * 0xCC9E2D51) & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
            h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
        h ^= 4 * len(words)
        for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            h = ((h ^ (h >> shift)) * mul) & 0xFFFFFFFF
        return h ^ (h >> 16)

    for seed, pos, tok in [(0, 0, 0), (42, 7, 151_000), (0xFFFFFFFF, 123456, 3)]:
        got = reference.murmur3_32(torch.tensor(seed), [torch.tensor(pos), torch.tensor(tok)])
        assert int(got) == murmur(seed, [pos, tok])


@pytest.mark.usefixtures("interpreter")
def test_triton_picks_the_reference_tokens():
    logits = _logits(6, 5000)
    logits[2] = float("-inf")  # fully masked row -> token 0, as torch.argmax
    logits[3, 100:] = float("-inf")  # top-k style mask
    seeds = torch.tensor([0, 1, 2**40 + 5, -7, 123456789, 2**63 - 1])
    positions = torch.tensor([0, 5, 9, 2**33, 17, 3])
    got = sampling.gumbel_sample(logits, seeds, positions, impl="triton")
    assert got.dtype == torch.int64
    assert torch.equal(got, reference.gumbel_sample(logits, seeds, positions))
    assert int(got[2]) == 0 and int(got[3]) < 100


@pytest.mark.usefixtures("interpreter")
def test_row_result_independent_of_batch():
    logits = _logits(5, 3000, seed=3)
    seeds, positions = torch.arange(5) * 1000 + 11, torch.arange(5) + 40
    full = sampling.gumbel_sample(logits, seeds, positions, impl="triton")
    alone = sampling.gumbel_sample(logits[3:4], seeds[3:4], positions[3:4], impl="triton")  # other split plan
    assert int(full[3]) == int(alone[0])
    shuffled = torch.tensor([4, 3, 0])
    again = sampling.gumbel_sample(logits[shuffled], seeds[shuffled], positions[shuffled], impl="triton")
    assert torch.equal(again, full[shuffled])


def test_same_seed_new_position_gives_fresh_noise():
    logits = torch.zeros(64, 1000)
    picks = sampling.gumbel_sample(logits, torch.full((64,), 5), torch.arange(64), impl="reference")
    assert len(set(picks.tolist())) > 50  # uniform logits: positions must not repeat the same draw


def test_frequencies_follow_softmax():
    # Many independent draws (distinct seeds) of one distribution; a chi-square test at p ~ 1e-4.
    probs_logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 40_000
    picks = reference.gumbel_sample(probs_logits.expand(n, -1).contiguous(), torch.arange(n) * 7919 + 1,
                                    torch.full((n,), 3))
    counts = torch.bincount(picks, minlength=6).double()
    expected = torch.softmax(probs_logits.double(), 0) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 25.7, f"chi2={chi2:.1f} with 5 dof; counts {counts.tolist()} vs {expected.tolist()}"
    assert math.isclose(float(counts[0] / n), float(expected[0] / n), abs_tol=0.01)


def test_bad_inputs_raise_value_error():
    logits = _logits(2, 10)
    with pytest.raises(ValueError, match="logits must be floating point"):
        sampling.gumbel_sample(logits.long(), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be int64"):
        sampling.gumbel_sample(logits, torch.zeros(2, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="seeds must be"):
        sampling.gumbel_sample(logits, torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64, 300])
def test_gpu_identical_tokens_to_reference(batch):
    logits = _logits(batch, 152_064, seed=batch, device="cuda")
    seeds = torch.randint(0, 2**62, (batch,), device="cuda")
    positions = torch.randint(0, 32_768, (batch,), device="cuda")
    want = reference.gumbel_sample(logits, seeds, positions)
    assert torch.equal(sampling.gumbel_sample(logits, seeds, positions), want)
    assert torch.equal(sampling.gumbel_sample(logits.cpu(), seeds.cpu(), positions.cpu()), want.cpu())


@pytest.mark.usefixtures("interpreter")
def test_bf16_logits_and_int32_ids_are_accepted_like_the_reference():
    logits = _logits(3, 2000, seed=9).to(torch.bfloat16)
    seeds, positions = torch.tensor([1, 2, 3], dtype=torch.int32), torch.tensor([4, 5, 6], dtype=torch.int32)
    want = reference.gumbel_sample(logits, seeds, positions)
    assert torch.equal(sampling.gumbel_sample(logits, seeds, positions, impl="triton"), want)
