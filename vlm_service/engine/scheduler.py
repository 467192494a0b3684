"""Scheduler: continuous batching of prefill chunks and decodes under a token budget. Pure bookkeeping.

Each step every running sequence gets its pending tokens (1 when decoding, a chunk when prefilling) while the
budget `max_batched_tokens` lasts; then waiting sequences are admitted (prefix-cache match first) up to
`max_num_seqs`. With a PrefillPolicy (prefill_policy.py) short requests go first: waiting short ones are admitted
before waiting long ones, and in a step that carries a short prefill the long prefills share a small token cap and
start no vision encode. When the KV pool runs out, the newest running sequence is preempted by recompute: its blocks
are freed and it goes back to the FRONT of the waiting queue, so it is the next to be admitted (no starvation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vlm_service.engine.kv_cache import BlockManager
from vlm_service.engine.prefill_policy import PrefillPolicy, after_new_visual, before_new_visual
from vlm_service.engine.sequence import Sequence, SeqStatus


@dataclass
class ScheduledChunk:
    """Tokens [start, start + num_tokens) of `seq` run this step; `samples` = the chunk reaches the sequence end,
    so the step samples its next token."""

    seq: Sequence
    start: int
    num_tokens: int
    samples: bool  # fixed at scheduling time (the sequence grows afterwards)

    @classmethod
    def of(cls, seq: Sequence, num_tokens: int) -> "ScheduledChunk":
        start = seq.num_computed_tokens
        return cls(seq, start, num_tokens, start + num_tokens == seq.num_tokens)

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)  # first time scheduled in this step
    mixed: bool = False  # a short prefill was pending: long prefills were capped (prefill_policy.py)
    held: int = 0  # long sequences held back by the policy in this step
    long_tokens: int = 0  # tokens of long prefills (prefill_policy.py) in this step

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class _Budget:
    """What is left of one step: tokens, and (mixed step only, else None) the long prefills' share of them."""

    tokens: int
    long_tokens: int | None = None
    unheld: set[int] = field(default_factory=set)  # id() of the sequences scheduled as short (or unrestricted)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_batched_tokens: int,
                 policy: PrefillPolicy | None = None):
        """policy None: arrival order only (running first, then waiting FIFO)."""
        self.bm = block_manager
        self.policy = policy or PrefillPolicy()
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.prefix_hit_tokens = 0  # total over the engine's life (stats)
        self.paused = 0  # sequences paused (in neither queue)

    # ---- queue management ------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting_tokens(self) -> int:
        return sum(s.num_tokens for s in self.waiting)

    def finish(self, seq: Sequence) -> None:
        """Remove a running, waiting or paused sequence and free its blocks (finish or abort)."""
        if seq.status == SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status == SeqStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status == SeqStatus.PAUSED:
            self.paused -= 1
        self.bm.free(seq)
        seq.status = SeqStatus.FINISHED

    def pause(self, seq: Sequence) -> None:
        """Take a running or waiting sequence out of scheduling; its blocks are freed like a preemption's (its
        tokens are recomputed on resume, mostly from the prefix cache)."""
        if seq.status not in (SeqStatus.RUNNING, SeqStatus.WAITING):
            return
        (self.running if seq.status == SeqStatus.RUNNING else self.waiting).remove(seq)
        self.bm.free(seq)
        seq.status = SeqStatus.PAUSED
        self.paused += 1

    def resume(self, seq: Sequence) -> None:
        """A paused sequence goes back to the FRONT of the waiting queue (it was admitted before the others)."""
        if seq.status == SeqStatus.PAUSED:
            seq.status = SeqStatus.WAITING
            self.waiting.appendleft(seq)
            self.paused -= 1

    def on_step_done(self, out: SchedulerOutput) -> None:
        """After the model ran: the chunks' KV is computed; newly full blocks enter the prefix cache."""
        for c in out.chunks:
            if c.seq.status != SeqStatus.RUNNING:  # finished (or aborted) while its step ran: blocks already freed
                continue
            c.seq.num_computed_tokens = c.end
            self.bm.cache_full_blocks(c.seq)

    # ---- the step --------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(mixed=self._mixed())
        budget = _Budget(self.max_batched_tokens, self.policy.mixed_long_tokens if out.mixed else None)
        self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        self._age(out, budget)
        return out

    def _mixed(self) -> bool:
        """Will this step carry a short prefill? (Then long prefills are capped.) A waiting one counts only while
        there is room to admit it, so a full batch does not hold the long prefills back for nothing."""
        p = self.policy
        if not p.enabled:
            return False
        room = len(self.running) < self.max_num_seqs
        return (any(p.is_short_prefill(s) for s in self.running)
                or room and any(p.is_short_prefill(s) for s in self.waiting))

    def _grant(self, seq: Sequence, budget: _Budget, short: bool) -> int:
        """Tokens `seq` may run this step: its pending ones within the budget; a long one in a mixed step also
        within the long share and short of its next visual item, in another step not far past a visual item's
        start (its encode gets a step of its own)."""
        n = min(seq.num_pending_tokens, budget.tokens)
        if self.policy.is_small(seq):
            return n
        if budget.long_tokens is None or short:
            return after_new_visual(seq, n, self.policy.mixed_long_tokens)
        return before_new_visual(seq, min(n, budget.long_tokens))

    def _spend(self, seq: Sequence, n: int, budget: _Budget, short: bool, out: SchedulerOutput) -> None:
        budget.tokens -= n
        if not self.policy.is_small(seq):  # long work, also when it goes in full for its age
            out.long_tokens += n
        if budget.long_tokens is None or short:
            budget.unheld.add(id(seq))
        else:
            budget.long_tokens -= n

    def _age(self, out: SchedulerOutput, budget: _Budget) -> None:
        """Count a mixed step against every long sequence it did not schedule unrestricted (it was held back); one
        that ran unrestricted (not a mixed step, or it counted as short) starts again from 0. With the policy off
        no step is mixed and every count stays 0: nothing to walk."""
        if not self.policy.enabled:
            return
        for q in (self.running, self.waiting):
            for seq in q:
                if id(seq) in budget.unheld:
                    seq.held_steps = 0
                elif out.mixed and not self.policy.is_short(seq):
                    seq.held_steps += 1
                    out.held += 1

    def _schedule_running(self, out: SchedulerOutput, budget: _Budget) -> None:
        """Decodes and small prefills first, then long prefills (each group in running order): a chunk of a long
        one never takes the budget of the decodes behind it."""
        small = [s for s in self.running if self.policy.is_small(s)]
        for seq in small + [s for s in self.running if not self.policy.is_small(s)]:
            if budget.tokens <= 0:
                break
            if seq.status != SeqStatus.RUNNING:  # preempted earlier in this loop
                continue
            if len(seq.output_ids) >= seq.max_tokens:  # its last token is sampled, not yet read back: it ends then
                continue
            short = self.policy.is_short(seq)
            n = self._grant(seq, budget, short)
            if n <= 0 or not self._make_room(seq, n, out):  # n 0: a long prefill held back (mixed step)
                continue
            self.bm.allocate(seq, n)
            out.chunks.append(ScheduledChunk.of(seq, n))
            self._spend(seq, n, budget, short, out)

    def _make_room(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Preempt the newest running sequences until `seq` fits; False when `seq` itself had to go."""
        while not self.bm.can_allocate(seq, n):
            victim = max(self.running, key=lambda s: s.seq_no)
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        out.chunks = [c for c in out.chunks if c.seq is not seq]
        self.bm.free(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _schedule_waiting(self, out: SchedulerOutput, budget: _Budget) -> None:
        """Admit in arrival order, the short ones first (policy on); stop at the first that the KV pool cannot
        hold, as before (no later one overtakes it for blocks)."""
        passes = (True, False) if self.policy.enabled else (True,)
        for short in passes:
            for seq in [s for s in self.waiting if self.policy.is_short(s) == short]:
                if budget.tokens <= 0 or len(self.running) >= self.max_num_seqs:
                    return
                if not self._admit(seq, out, budget, short):
                    return

    def _admit(self, seq: Sequence, out: SchedulerOutput, budget: _Budget, short: bool) -> bool:
        """Admit `seq` with its first chunk; False when the KV pool cannot hold it (admission stops). `short` is
        judged before the prefix-cache match (which may shorten it)."""
        hit = self.bm.match_prefix(seq)
        n = self._grant(seq, budget, short)
        if n <= 0 or not self.bm.can_allocate(seq, n):
            self.bm.free(seq)  # give the claimed prefix blocks back; they stay cached
            return n <= 0  # held back by the policy: the next ones may still come in
        self.waiting.remove(seq)
        self.bm.allocate(seq, n)
        if not seq.ever_scheduled:
            seq.ever_scheduled = True
            seq.num_cached_tokens = hit
            self.prefix_hit_tokens += hit
            out.admitted.append(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        out.chunks.append(ScheduledChunk.of(seq, n))
        self._spend(seq, n, budget, short, out)
        return True
