"""OutputStream: one request's outputs on their way from the engine thread to its reader, with backpressure.

The engine thread hands outputs to the reader's event loop (call_soon_threadsafe -> an asyncio.Queue). A reader that
stops reading (a gRPC client that does not consume its stream: the servicer's write blocks, so it stops pulling
from here) must not keep the request generating: when `max_buffered` TokenDeltas wait unread the engine PAUSES the
request (not scheduled, KV blocks freed, recomputed on resume); when the reader has taken the buffer down to half it
asks for a resume. A request paused longer than `stalled_timeout_s` (> 0) is aborted.

Each field has one writer: the engine thread counts `delivered` and sets `paused`/`paused_at`; the reader's loop
counts `consumed` and sets `resume_asked` and `aborted`. No lock is needed: the engine sets `paused` before it hands
over the outputs that made the buffer full, so the reader sees the flag by the time it has taken them, and it always
asks for the resume at the latest when it has taken everything delivered (no pause can outlive a caught-up reader).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from vlm_service.engine.isolation import Failed
from vlm_service.types import Finished, FinishReason, ProcessedInput, Usage


@dataclass(eq=False)
class OutputStream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    delivered: int = 0  # TokenDeltas handed to the loop (engine thread)
    consumed: int = 0  # TokenDeltas the reader took (loop)
    paused: bool = False  # the engine paused the request for this reader (engine thread)
    paused_at: float = 0.0  # time.monotonic() of the pause (engine thread)
    resume_asked: bool = False  # the reader asked for a resume (loop)
    aborted: bool = False  # an Abort answered found=true: the stream ends with ABORT (loop)

    @property
    def buffered(self) -> int:
        """TokenDeltas delivered and not yet taken by the reader (some may still be on their way to the queue)."""
        return self.delivered - self.consumed

    def should_pause(self, max_buffered: int) -> bool:
        """Engine thread, after counting a delivery: the reader is `max_buffered` behind (0 = never pause)."""
        return max_buffered > 0 and not self.paused and self.buffered >= max_buffered

    def took_one(self, max_buffered: int) -> bool:
        """Loop side, the reader took a TokenDelta: True when it should now ask for a resume (once per pause)."""
        self.consumed += 1
        if self.paused and not self.resume_asked and self.buffered <= max_buffered // 2:
            self.resume_asked = True
            return True
        return False

    def resumed(self) -> None:
        """Engine thread, the resume is applied: the flags are reset in this order so a new pause asks anew."""
        self.paused = False
        self.resume_asked = False

    def final(self, fin: Finished) -> Finished:
        """The Finished the reader gets: an accepted Abort wins over a finish the reader had not read yet."""
        if self.aborted and fin.finish_reason != FinishReason.ABORT:
            return dataclasses.replace(fin, finish_reason=FinishReason.ABORT, matched_stop="")
        return fin


def aborted_before_start(request_id: str, processed: ProcessedInput) -> Finished:
    """The Finished of a request aborted while it was still being preprocessed (it never reached the engine)."""
    return Finished(request_id, FinishReason.ABORT,
                    usage=Usage(len(processed.input_ids), 0, 0, processed.num_visual_tokens))


def deliver(items: list) -> None:
    """On the asyncio side (AsyncEngine._publish schedules it on each stream's loop): put each (stream, output) on
    the stream's queue, a Failed as its error (the exception itself)."""
    for stream, out in items:
        stream.queue.put_nowait(out.error if isinstance(out, Failed) else out)
