"""Incremental detokenization and the finish rules of one request.

IncrementalDetokenizer never emits a partial multi-byte character: text whose decode ends in U+FFFD waits for the
next token. OutputState applies, per sampled token: stop token ids / EOS (unless ignore_eos), stop strings matched
on the text (a possible stop prefix is held back until resolved; the matched stop is not emitted), min_tokens
(EOS and stop ids are banned from sampling until reached; stop strings are not checked before it), max_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_service.types import FinishReason, SamplingParams

_REPLACEMENT = "\ufffd"


def fast_decoder(tokenizer):
    """ids -> text, skipping special tokens. A transformers fast tokenizer that does no clean-up of spaces decodes
    exactly like its Rust `tokenizers` backend, so that is called directly: the Python wrapper costs more than the
    decode itself, and the engine decodes twice per token per running request."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if callable(getattr(backend, "decode", None)) and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    """Decodes a growing list of token ids into text deltas (tokenizer: anything with decode(ids, skip_special_tokens))."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._decode_fn = fast_decoder(tokenizer)
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = 0  # ids before this are already turned into emitted text

    def _decode(self, ids: list[int]) -> str:
        return self._decode_fn(ids) if ids else ""

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (may be empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith(_REPLACEMENT) or len(full) <= len(prefix):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix):]

    def flush(self) -> str:
        """Text of tokens still held (an incomplete trailing character is dropped, never emitted)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):].rstrip(_REPLACEMENT)


@dataclass
class StepText:
    """What one sampled token produced: text to stream now, and the finish when this token ends the request."""

    text: str = ""
    finish: FinishReason | None = None
    matched_stop: str = ""


class OutputState:
    """Finish rules and held-back text of one request."""

    def __init__(self, tokenizer, sampling: SamplingParams, eos_ids: tuple[int, ...], max_tokens: int):
        self.detok = IncrementalDetokenizer(tokenizer)
        self.sampling = sampling
        self.max_tokens = max_tokens
        eos = () if sampling.ignore_eos else tuple(eos_ids)
        self.stop_ids = frozenset(eos) | frozenset(sampling.stop_token_ids)
        self.stops = tuple(s for s in sampling.stop if s)
        self.text = ""
        self.emitted = 0  # len of self.text already streamed
        self.num_output = 0

    def banned_ids(self, generated: int | None = None) -> tuple[int, ...]:
        """Ids the sampler must not pick for the next token, while min_tokens is not reached. `generated`: tokens
        the sequence already has, counting ones sampled but not yet appended here (overlapped steps)."""
        n = self.num_output if generated is None else generated
        return tuple(self.stop_ids) if n < self.sampling.min_tokens else ()

    def append(self, token_id: int) -> StepText:
        self.num_output += 1
        if token_id in self.stop_ids and self.num_output > self.sampling.min_tokens:
            return StepText(self._flush(), FinishReason.STOP)
        self.text += self.detok.push(token_id)
        if self.stops and self.num_output >= self.sampling.min_tokens:
            hit = self._find_stop()
            if hit is not None:
                pos, stop = hit
                out = self.text[self.emitted:pos]
                self.emitted = len(self.text)
                return StepText(out, FinishReason.STOP_SEQUENCE, stop)
        if self.num_output >= self.max_tokens:
            return StepText(self._flush(), FinishReason.LENGTH)
        return StepText(self._take(len(self.text) - self._held_back()))

    def _find_stop(self) -> tuple[int, str] | None:
        """Earliest stop string in the unstreamed text: (start index in self.text, the stop)."""
        best = None
        for s in self.stops:
            i = self.text.find(s, self.emitted)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def _held_back(self) -> int:
        """Length of the longest unstreamed suffix that could still start a stop string."""
        if not self.stops or self.num_output + 1 < self.sampling.min_tokens:
            return 0
        tail = self.text[self.emitted:]
        for n in range(min(len(tail), max(len(s) for s in self.stops) - 1), 0, -1):
            if any(s.startswith(tail[-n:]) for s in self.stops):
                return n
        return 0

    def _take(self, end: int) -> str:
        out = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return out

    def _flush(self) -> str:
        self.text += self.detok.flush()
        return self._take(len(self.text))
