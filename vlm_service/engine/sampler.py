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
from vlm_service.engine.transfer import to_device
from vlm_service.types import SamplingParams, TokenLogprob


@dataclass
class SampleRow:
    """What the sampler needs about one row of the logits."""

    params: SamplingParams
    position: int  # index in the sequence of the token being generated
    seen_ids: list[int] | None = None  # prompt + output ids, only when repetition_penalty != 1
    banned_ids: tuple[int, ...] = ()  # EOS / stop ids suppressed until min_tokens is reached
    generator: torch.Generator | None = None  # unseeded random rows
    seen_on_device: torch.Tensor | None = None  # [1] a seen token still on the device (sampled, not read back)


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
    """logits [B, V] float32 (one row per entry of `rows`) -> one token per row."""
    return sample_async(logits, rows).result()


def sample_async(logits: torch.Tensor, rows: list[SampleRow]) -> "PendingSample":
    """Like sample(), but every result stays on the device until PendingSample.result(): nothing here waits for the
    GPU, so the engine can launch the next step before it reads these tokens."""
    logits = logits.float().clone()
    _apply_penalties(logits, rows)
    _apply_banned(logits, rows)
    greedy = [r.params.greedy for r in rows]
    if not all(greedy):
        logits = _apply_filters(logits, rows, greedy)
    tokens = _draw(logits, rows, greedy)
    return PendingSample(tokens, *_logprobs(logits, tokens, rows))


class PendingSample:
    """A step's sampled tokens (and logprobs) on their way to the host: the device->host copies start at once
    (into pinned memory on CUDA) and result() waits for them alone, not for work queued after them."""

    def __init__(self, tokens: torch.Tensor, lp_rows: list[int], top_k: list[int], chosen: torch.Tensor | None,
                 top_vals: torch.Tensor | None, top_ids: torch.Tensor | None):
        self.device_tokens = tokens  # [B] int64, on the logits' device (the next step reads it there)
        self.lp_rows, self.top_k = lp_rows, top_k
        self.event = None
        self._host = [self._to_host(t) for t in (tokens, chosen, top_vals, top_ids)]
        if tokens.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    @staticmethod
    def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not t.is_cuda:
            return t
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.copy_(t, non_blocking=True)
        return out

    def result(self) -> SampleResult:
        if self.event is not None:
            self.event.synchronize()
        tokens, chosen, top_vals, top_ids = (t.tolist() if t is not None else None for t in self._host)
        logprobs: list[TokenLogprob | None] = [None] * len(tokens)
        for j, i in enumerate(self.lp_rows):
            k = self.top_k[j]
            top = tuple(zip(top_ids[j][:k], top_vals[j][:k])) if k > 0 else ()
            logprobs[i] = TokenLogprob(tokens[i], chosen[j], top)
        return SampleResult(tokens, logprobs)


def _apply_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> None:
    # HF convention: a seen token's logit is divided by the penalty when positive, multiplied when negative.
    # Seen ids become a mask (duplicates are harmless), so a token still on the device joins without a sync.
    for i, r in enumerate(rows):
        p = r.params.repetition_penalty
        if p == 1.0 or not (r.seen_ids or r.seen_on_device is not None):
            continue
        seen = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        seen[to_device(r.seen_ids or [], torch.long, logits.device)] = True
        if r.seen_on_device is not None:
            seen[r.seen_on_device] = True
        row = logits[i]
        logits[i] = torch.where(seen, torch.where(row > 0, row / p, row * p), row)


def _apply_banned(logits: torch.Tensor, rows: list[SampleRow]) -> None:
    # one indexed write for the whole batch (a benchmark run sets min_tokens on every row: 64 writes a step before)
    row_idx = [i for i, r in enumerate(rows) for _ in r.banned_ids]
    if row_idx:
        col_idx = [t for r in rows for t in r.banned_ids]
        dev = logits.device
        logits[to_device(row_idx, torch.long, dev), to_device(col_idx, torch.long, dev)] = float("-inf")


def _apply_filters(logits: torch.Tensor, rows: list[SampleRow], greedy: list[bool]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on the non-greedy rows (vectorized over them); greedy rows unchanged."""
    picked = [i for i, g in enumerate(greedy) if not g]
    ps = [rows[i].params for i in picked]
    dev = logits.device
    idx = to_device(picked, torch.long, dev)
    temp = to_device([p.temperature for p in ps], torch.float32, dev)[:, None]
    top_k = to_device([p.top_k if p.top_k > 0 else logits.shape[1] for p in ps], torch.long, dev)[:, None]
    top_p = to_device([p.top_p for p in ps], torch.float32, dev)[:, None]
    min_p = to_device([p.min_p for p in ps], torch.float32, dev)[:, None]
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
        dev = logits.device
        idx = to_device(seeded, torch.long, dev)
        seeds = to_device([_fold_seed(rows[i].params.seed) for i in seeded], torch.long, dev)
        pos = to_device([rows[i].position for i in seeded], torch.long, dev)
        tokens[idx] = kernels.gumbel_sample(logits[idx], seeds, pos)
    for i, r in enumerate(rows):
        if not greedy[i] and r.params.seed is None:
            probs = logits[i].softmax(-1)
            tokens[i] = torch.multinomial(probs, 1, generator=r.generator)[0]
    return tokens


def _logprobs(logits: torch.Tensor, tokens: torch.Tensor, rows: list[SampleRow]):
    """(rows wanting logprobs, their top_logprobs k, chosen-token logprob [n], top values [n, kmax], top ids
    [n, kmax]), all on the device; None tensors when no row asks."""
    want = [i for i, r in enumerate(rows) if r.params.logprobs or r.params.top_logprobs > 0]
    if not want:
        return [], [], None, None, None
    ks = [rows[i].params.top_logprobs for i in want]
    idx = to_device(want, torch.long, logits.device)
    lp = torch.log_softmax(logits[idx], dim=-1)
    chosen = lp.gather(1, tokens[idx][:, None])[:, 0]
    kmax = min(max(ks), lp.shape[1])
    top_vals, top_ids = lp.topk(kmax) if kmax > 0 else (None, None)
    return want, ks, chosen, top_vals, top_ids


def _fold_seed(seed: int) -> int:
    """uint64 seed -> the 32-bit MurmurHash3 seed (both halves count)."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return (seed ^ (seed >> 32)) & 0xFFFFFFFF
