"""One request's state inside the engine: tokens, KV blocks, progress. Pure bookkeeping, no torch ops."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from vlm_service.types import ProcessedInput, SamplingParams

_seq_counter = itertools.count()

# placeholder in Sequence.output_ids for a token sampled by a step whose result is not read back yet (the engine
# overlaps reading one step's tokens with running the next); never a real token id
PENDING = -1


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PAUSED = "paused"  # not scheduled and holding no blocks: its reader is behind (AsyncEngine backpressure)
    FINISHED = "finished"


@dataclass(frozen=True)
class VisualSpan:
    """Where a run of a visual item's pad tokens sits in the prompt: [offset, offset + num_tokens).

    An image is one span; a Qwen3-VL video is one span per frame group (timestamp text between them). embed_start:
    the row of the item's embeddings that the span's first token takes; item: the index of the item in
    ProcessedInput.visuals (whose pixels the span's embeddings come from)."""

    content_hash: str
    offset: int
    num_tokens: int
    embed_start: int = 0
    item: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens


ImageSpan = VisualSpan  # the former name


def visual_spans(processed: ProcessedInput) -> tuple[VisualSpan, ...]:
    """Every pad run of every visual item of a prompt, in prompt order."""
    spans = [VisualSpan(item.content_hash, off, n, start, i) for i, item in enumerate(processed.visuals)
             for off, n, start in item.prompt_runs()]
    return tuple(sorted(spans, key=lambda s: s.offset))


@dataclass
class SeqTimes:
    """time.monotonic() stamps of a request's life (0.0 = not yet)."""

    arrival: float = 0.0
    first_scheduled: float = 0.0
    first_token: float = 0.0
    vision_ms: float = 0.0


@dataclass(eq=False)
class Sequence:
    """A request being generated. Tokens [0, num_computed_tokens) have their KV in `block_table`'s blocks."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    max_tokens: int  # completion limit, already capped by the context
    visuals: tuple[VisualSpan, ...] = ()  # the prompt's visual spans (images and video frame groups)
    processed: ProcessedInput | None = None  # kept for pixel values and MRoPE positions (None in pure unit tests)
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of the first len() full blocks
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prefix-cache hit at first admission (reported as Usage.cached_tokens)
    status: SeqStatus = SeqStatus.WAITING
    times: SeqTimes = field(default_factory=SeqTimes)
    seq_no: int = field(default_factory=lambda: next(_seq_counter))  # arrival order: larger = newer
    ever_scheduled: bool = False
    held_steps: int = 0  # mixed steps in a row it was held back as a long prefill (prefill_policy.py)
    first_step: int = 0  # engine step number that first scheduled it (0 = not yet; the step log)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens whose KV is not yet computed (1 in steady decode, many during (re)prefill)."""
        return self.num_tokens - self.num_computed_tokens

    def token_range(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_ids)
        if end <= n:
            return self.prompt_ids[start:end]
        return (self.prompt_ids[start:] if start < n else []) + self.output_ids[max(start - n, 0): end - n]

    def block_content(self, index: int, block_size: int) -> tuple:
        """What a full block holds, as the prefix cache keys it: its token ids and, for visual pad tokens, the
        item's content hash with the embedding row inside the item (same text + other image -> other key)."""
        start, end = index * block_size, (index + 1) * block_size
        imgs = tuple((s.content_hash, s.embed_start + max(start, s.offset) - s.offset, max(start, s.offset) - start)
                     for s in self.visuals if s.offset < end and s.end > start)
        return tuple(self.token_range(start, end)), imgs

    def visuals_in(self, start: int, end: int) -> list[VisualSpan]:
        """Visual spans whose pad tokens overlap token range [start, end)."""
        return [s for s in self.visuals if s.offset < end and s.end > start]

    def items_started_before(self, offset: int) -> set[int]:
        """Visual items (by index) with a pad token before `offset`: a chunk from `offset` on starts none of them."""
        return {s.item for s in self.visuals if s.offset < offset}
