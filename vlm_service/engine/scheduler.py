"""Scheduler: continuous batching of prefill chunks and decodes under a token budget. Pure bookkeeping.

Each step every running sequence gets its pending tokens (1 when decoding, a chunk when prefilling) while the
budget `max_batched_tokens` lasts; then waiting sequences are admitted (prefix-cache match first) up to
`max_num_seqs`. When the KV pool runs out, the newest running sequence is preempted by recompute: its blocks are
freed and it goes back to the FRONT of the waiting queue, so it is the next to be admitted (no starvation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vlm_service.engine.kv_cache import BlockManager
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

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_batched_tokens: int):
        self.bm = block_manager
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
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq.status != SeqStatus.RUNNING:  # preempted earlier in this loop
                continue
            if len(seq.output_ids) >= seq.max_tokens:  # its last token is sampled, not yet read back: it ends then
                continue
            n = min(seq.num_pending_tokens, budget)
            if not self._make_room(seq, n, out):
                continue
            self.bm.allocate(seq, n)
            out.chunks.append(ScheduledChunk.of(seq, n))
            budget -= n
        return budget

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

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hit = self.bm.match_prefix(seq)
            n = min(seq.num_pending_tokens, budget)
            if not self.bm.can_allocate(seq, n):
                self.bm.free(seq)  # give the claimed prefix blocks back; they stay cached
                break
            self.waiting.popleft()
            self.bm.allocate(seq, n)
            if not seq.ever_scheduled:
                seq.ever_scheduled = True
                seq.num_cached_tokens = hit
                self.prefix_hit_tokens += hit
                out.admitted.append(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk.of(seq, n))
            budget -= n
