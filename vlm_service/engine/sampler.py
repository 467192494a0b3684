"""Per-row sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, banned ids, logprobs.

Order per row: repetition penalty -> banned ids (min_tokens) -> [greedy: argmax] or [temperature -> top-k ->
top-p -> min-p -> draw]. Seeded rows draw with kernels.gumbel_sample(logits, seed, position), where position is the
index the new token takes in its sequence, so a seed gives the same tokens whatever the batch around it. Unseeded
random rows draw with their request's own torch.Generator.

Logprobs are of the FINAL distribution the token was drawn from: log_softmax after penalty, banned ids,
temperature and top-k/top-p/min-p filtering (greedy rows: after penalty and banned ids, temperature 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from vlm_service.types import SamplingParams, TokenLogprob


@dataclass
class SampleRow:
    """What the sampler needs about one row of the logits."""

    params: SamplingParams
    position: int  # index in the sequence of the token being generated
    seen_ids: list[int] | None = None  # prompt + output ids, only when repetition_penalty != 1
    banned_ids: tuple[int, ...] = ()  # EOS / stop ids suppressed until min_tokens is reached
    generator: torch.Generator | None = None  # unseeded random rows


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
    """logits [B, V] float32 (one row per entry of `rows`) -> one token per row."""
    logits = logits.float().clone()
    _apply_penalties(logits, rows)
    _apply_banned(logits, rows)
    greedy = [r.params.greedy for r in rows]
    if not all(greedy):
        logits = _apply_filters(logits, rows, greedy)
    tokens = _draw(logits, rows, greedy)
    return SampleResult(tokens.tolist(), _logprobs(logits, tokens, rows))


def _apply_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> None:
    # HF convention: a seen token's logit is divided by the penalty when positive, multiplied when negative.
    for i, r in enumerate(rows):
        p = r.params.repetition_penalty
        if p == 1.0 or not r.seen_ids:
            continue
        ids = torch.tensor(sorted(set(r.seen_ids)), device=logits.device)
        vals = logits[i, ids]
        logits[i, ids] = torch.where(vals > 0, vals / p, vals * p)


def _apply_banned(logits: torch.Tensor, rows: list[SampleRow]) -> None:
    # one indexed write for the whole batch (a benchmark run sets min_tokens on every row: 64 writes a step before)
    row_idx = [i for i, r in enumerate(rows) for _ in r.banned_ids]
    if row_idx:
        col_idx = [t for r in rows for t in r.banned_ids]
        logits[torch.tensor(row_idx, device=logits.device), torch.tensor(col_idx, device=logits.device)] = float("-inf")


def _apply_filters(logits: torch.Tensor, rows: list[SampleRow], greedy: list[bool]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on the non-greedy rows (vectorized over them); greedy rows unchanged."""
    idx = torch.tensor([i for i, g in enumerate(greedy) if not g], device=logits.device)
    ps = [rows[i].params for i in idx.tolist()]
    dev = logits.device
    temp = torch.tensor([p.temperature for p in ps], device=dev)[:, None]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else logits.shape[1] for p in ps], device=dev)[:, None]
    top_p = torch.tensor([p.top_p for p in ps], device=dev)[:, None]
    min_p = torch.tensor([p.min_p for p in ps], device=dev)[:, None]
    sub = logits[idx] / temp  # [b, V]
    vals, order = sub.sort(dim=-1, descending=True)
    probs = vals.softmax(-1)
    ranks = torch.arange(vals.shape[1], device=dev)[None, :]
    drop = ranks >= top_k
    drop |= (probs.cumsum(-1) - probs) >= top_p  # keep the smallest head whose mass reaches top_p
    drop |= probs < min_p * probs[:, :1]
    drop[:, 0] = False  # the most likely token always survives
    vals = vals.masked_fill(drop, float("-inf"))
    out = logits.clone()
    out[idx] = torch.full_like(sub, float("-inf")).scatter(1, order, vals)
    return out


def _draw(logits: torch.Tensor, rows: list[SampleRow], greedy: list[bool]) -> torch.Tensor:
    tokens = logits.argmax(dim=-1)
    seeded = [i for i, r in enumerate(rows) if not greedy[i] and r.params.seed is not None]
    if seeded:
        idx = torch.tensor(seeded, device=logits.device)
        seeds = torch.tensor([_fold_seed(rows[i].params.seed) for i in seeded], device=logits.device)
        pos = torch.tensor([rows[i].position for i in seeded], device=logits.device)
        tokens[idx] = kernels.gumbel_sample(logits[idx], seeds, pos)
    for i, r in enumerate(rows):
        if not greedy[i] and r.params.seed is None:
            probs = logits[i].softmax(-1)
            tokens[i] = torch.multinomial(probs, 1, generator=r.generator)[0]
    return tokens


def _logprobs(logits: torch.Tensor, tokens: torch.Tensor, rows: list[SampleRow]) -> list[TokenLogprob | None]:
    want = [i for i, r in enumerate(rows) if r.params.logprobs or r.params.top_logprobs > 0]
    out: list[TokenLogprob | None] = [None] * len(rows)
    if not want:
        return out
    lp = torch.log_softmax(logits[want], dim=-1)
    for j, i in enumerate(want):
        tok = int(tokens[i])
        k = rows[i].params.top_logprobs
        top = ()
        if k > 0:
            v, ids = lp[j].topk(min(k, lp.shape[1]))
            top = tuple(zip(ids.tolist(), v.tolist()))
        out[i] = TokenLogprob(tok, float(lp[j, tok]), top)
    return out


def _fold_seed(seed: int) -> int:
    """uint64 seed -> the 32-bit MurmurHash3 seed (both halves count)."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return (seed ^ (seed >> 32)) & 0xFFFFFFFF
