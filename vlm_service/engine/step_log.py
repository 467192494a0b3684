"""The step log (EngineConfig.step_log): one INFO line per launched engine step and one per first token, on logger
`vlm_service.steps`, so a latency under load can be explained from the server log alone (which steps a request
waited behind, what they carried, how long they took). With --log-format json the fields are top-level keys.
"""

from __future__ import annotations

import logging
import time

from vlm_service.engine.scheduler import SchedulerOutput

log = logging.getLogger("vlm_service.steps")


def new_visual_tokens(out: SchedulerOutput) -> int:
    """Visual tokens of the items this step reaches first (what its vision encodes cover, before cache hits)."""
    total = 0
    for c in out.chunks:
        started = {s.item for s in c.seq.visuals if s.offset < c.start}
        fresh = {s.item for s in c.seq.visuals_in(c.start, c.end) if s.item not in started}
        total += sum(s.num_tokens for s in c.seq.visuals if s.item in fresh)
    return total


class StepLog:
    """Writes nothing unless enabled; `launched` once per step, `first_token` once per request."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last = 0.0

    def launched(self, step: int, out: SchedulerOutput) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        decodes = sum(1 for c in out.chunks if c.num_tokens == 1 and c.samples)
        fields = {"step": step, "since_prev_ms": round((now - self._last) * 1000.0, 2) if self._last else None,
                  "chunks": len(out.chunks), "tokens": out.num_tokens, "decodes": decodes,
                  "prefill_tokens": out.num_tokens - decodes, "new_visual_tokens": new_visual_tokens(out),
                  "admitted": [s.request_id for s in out.admitted], "mixed": out.mixed, "held": out.held,
                  "preempted": len(out.preempted)}
        self._last = now
        log.info("step %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})

    def first_token(self, request_id: str, first_step: int, step: int) -> None:
        """`step`: the step that sampled it; the request was first scheduled in `first_step`."""
        if not self.enabled:
            return
        fields = {"first_token": request_id, "first_step": first_step, "step": step,
                  "steps_to_first_token": step - first_step + 1}
        log.info("first token %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})
