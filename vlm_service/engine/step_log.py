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
        started = c.seq.items_started_before(c.start)
        fresh = {s.item for s in c.seq.visuals_in(c.start, c.end) if s.item not in started}
        total += sum(s.num_tokens for s in c.seq.visuals if s.item in fresh)
    return total


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 2)


class StepLog:
    """Writes nothing unless enabled. Per step: begin (scheduled) -> launched (forward and sampling queued) -> end
    (step() returns, after reading back the previous launch's tokens, or this one's without overlap); one line at
    end. `first_token` once per request."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last = 0.0  # the previous step's begin
        self._fields: dict = {}
        self._t_begin = self._t_launched = 0.0

    def begin(self, step: int, out: SchedulerOutput) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        decodes = sum(1 for c in out.chunks if c.num_tokens == 1 and c.samples)
        self._fields = {"step": step, "since_prev_ms": _ms(self._last, now) if self._last else None,
                        "chunks": len(out.chunks), "tokens": out.num_tokens, "decodes": decodes,
                        "prefill_tokens": out.num_tokens - decodes, "new_visual_tokens": new_visual_tokens(out),
                        "admitted": [s.request_id for s in out.admitted], "mixed": out.mixed, "held": out.held,
                        "preempted": len(out.preempted)}
        self._last = self._t_begin = now

    def launched(self) -> None:
        if self.enabled:
            self._t_launched = time.monotonic()

    def end(self) -> None:
        """launch_ms: host time to queue the step (long = something in it waited for the device); read_ms: the
        wait for the tokens read back in this call."""
        if not self.enabled or not self._fields:
            return
        now = time.monotonic()
        fields, self._fields = self._fields, {}
        fields["launch_ms"] = _ms(self._t_begin, self._t_launched)
        fields["read_ms"] = _ms(self._t_launched, now)
        log.info("step %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})

    def first_token(self, request_id: str, first_step: int, step: int) -> None:
        """`step`: the step that sampled it; the request was first scheduled in `first_step`."""
        if not self.enabled:
            return
        fields = {"first_token": request_id, "first_step": first_step, "step": step,
                  "steps_to_first_token": step - first_step + 1}
        log.info("first token %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})
