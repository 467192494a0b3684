"""Short-first prefill policy: which sequences a step serves first, and how much long prefill a step may carry.

Why: a step's time is set by its biggest work. A 2048² image is ~4096 prompt tokens plus a vision tower over 16384
patches (~200 ms on the H200 in one step); a 512² request behind it needs ~30 ms. Served in arrival order the short
one waits for the long work. So a sequence whose remaining prefill is at most `short_tokens` is SHORT (decodes are
short: 1 token) and is scheduled before LONG prefills; in a step that carries a short prefill ("mixed" step) the long
prefills together get at most `mixed_long_tokens` tokens and start no visual item (no new vision encode), so that
step stays about as short as the short request's own work. In other steps a long prefill chunk that starts a visual
item ends `mixed_long_tokens` into it, so the item's encode and a full chunk of prefill are two steps of about half
the time each (a short request then waits for at most one of them). A long sequence held back `max_hold_steps` mixed steps in
a row counts as short for the next one (gets its full chunk, FIFO again): the long ones are never starved.

The engine (engine.py) also reads a step with more long prefill than a mixed step's share back before it schedules
the next one, so no step is launched ahead behind it: a short request arriving during it is in the next launch.

With every request short (the usual load of similar requests) the order is the old one: running first, then
waiting in arrival order. Pure bookkeeping on Sequence fields; no clocks, so a test replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_service.engine.sequence import Sequence


@dataclass(frozen=True)
class PrefillPolicy:
    """short_tokens: remaining prefill at most this -> short (0: the policy is off, every sequence is short);
    mixed_long_tokens: long prefill tokens (all long sequences together) in a step with a short prefill;
    max_hold_steps: mixed steps in a row a long sequence may be held back before it counts as short."""

    short_tokens: int = 0
    mixed_long_tokens: int = 256
    max_hold_steps: int = 4

    @property
    def enabled(self) -> bool:
        return self.short_tokens > 0

    def is_small(self, seq: Sequence) -> bool:
        """At most short_tokens still to compute (a prefix-cache hit is not known before admission)."""
        return not self.enabled or seq.num_pending_tokens <= self.short_tokens

    def is_short(self, seq: Sequence) -> bool:
        """Scheduled as short: small, or a long one held back max_hold_steps mixed steps in a row."""
        return self.is_small(seq) or seq.held_steps >= self.max_hold_steps

    def is_short_prefill(self, seq: Sequence) -> bool:
        """Small and still prefilling (more than the one token of a decode step): makes a step mixed. (A long one
        that goes in full for its age does not: it is long work all the same.)"""
        return self.enabled and 1 < seq.num_pending_tokens <= self.short_tokens


def _first_new_visual(seq: Sequence) -> int | None:
    """Offset of the first visual span whose item no computed token has reached yet (None: there is none)."""
    start = seq.num_computed_tokens
    started = seq.items_started_before(start)
    for span in seq.visuals:  # in prompt order
        if span.offset >= start and span.item not in started:
            return span.offset
    return None


def after_new_visual(seq: Sequence, n: int, extra: int) -> int:
    """`n` cut so a chunk that starts a new visual item ends `extra` tokens into it: the item's vision encode and a
    full chunk of text-model tokens do not share one step (each is ~100 ms for a 2048² image on the H200)."""
    at = _first_new_visual(seq)
    start = seq.num_computed_tokens
    return n if at is None or at >= start + n else min(n, at - start + max(extra, 1))


def before_new_visual(seq: Sequence, n: int) -> int:
    """`n` (tokens of the next chunk of `seq`) cut so the chunk ends before the first visual item that no computed
    token has reached yet: the runner encodes an item in the step of the first chunk that overlaps it, so such a
    chunk starts no vision encode. 0 when the next token is that item's first."""
    at = _first_new_visual(seq)
    return n if at is None else min(n, at - seq.num_computed_tokens)
