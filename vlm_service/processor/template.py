"""Chat template -> token ids where client text cannot forge turns (DESIGN.md, reliability 14).

The template's own special tokens (`<|im_start|>`, `<|im_end|>`, the vision markers, ...) become their ids; a special
token's characters inside client text (any role) stay plain text, tokenized as characters. How:

1. render the chat as transformers does (`apply_chat_template(..., tokenize=False)`): the real text;
2. render it again with every non-whitespace character of client text replaced by a private-use character (same
   length, same whitespace, so strip()/trim in a template behave the same): the *structure*. Every special token in
   the structure came from the template itself;
3. cut the real text at the structure's special-token positions; the template specials map to their ids, the text
   between them is tokenized with special-token parsing off.

For chats with no special-token text this gives exactly the ids of tokenizing the rendering with parsing on (the
tokenizer also splits at added tokens first and then encodes each piece on its own). A template whose output depends
on the content (e.g. it looks for `</think>`) renders a structure of another length; then only the special tokens in
client text are masked (same length), and if that still differs the chat is refused rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import replace

from vlm_service.errors import InvalidInput
from vlm_service.types import ChatMessage, ImageInput, VideoInput

_MASK = "\ue000"  # a private-use character: no template or tokenizer gives it a meaning


class TemplateTokenizer:
    """Renders a chat with the tokenizer's chat template and tokenizes it (see the module docstring).

    trust_client_special_tokens=True restores plain transformers behaviour: specials in client text are parsed.
    """

    def __init__(self, tokenizer, trust_client_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.trust = trust_client_special_tokens
        self._plain = _plain_tokenizer(tokenizer)
        specials = special_token_strings(tokenizer)
        self._special_ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in specials}
        self._special_re = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))

    def render(self, messages: tuple[ChatMessage, ...], transform=None) -> str:
        """The chat template's text with the generation prompt, as transformers renders it; `transform` rewrites
        the rendering the way the checkpoint's processor does (Qwen3-VL's per-group video timestamps)."""
        text = self.tokenizer.apply_chat_template(to_hf_conversation(messages), add_generation_prompt=True,
                                                  tokenize=False)
        return transform(text) if transform is not None else text

    def encode(self, messages: tuple[ChatMessage, ...], transform=None) -> list[int]:
        """Token ids of the rendered chat; client text is plain text unless trusted."""
        text = self.render(messages, transform)
        if self.trust:
            return list(self.tokenizer(text)["input_ids"])
        return self._encode_with(text, self._structure(messages, text, transform))

    def _structure(self, messages, text: str, transform=None) -> str:
        for mask in (_mask_all, self._mask_specials):
            structure = self.render(_masked(messages, mask), transform)
            if len(structure) == len(text):
                return structure
        raise InvalidInput("the chat template renders this text in a way that hides where the turns are; remove "
                           "special-token markup from the text", field="messages")

    def _encode_with(self, text: str, structure: str) -> list[int]:
        ids, start = [], 0
        for m in self._special_re.finditer(structure):
            if text[m.start():m.end()] != m.group():
                raise InvalidInput("the chat template renders this text in a way that hides where the turns are",
                                   field="messages")
            ids += self._plain_ids(text[start:m.start()])
            ids.append(self._special_ids[m.group()])
            start = m.end()
        return ids + self._plain_ids(text[start:])

    def _plain_ids(self, piece: str) -> list[int]:
        return self._plain.encode(piece, add_special_tokens=False).ids if piece else []

    def _mask_specials(self, text: str) -> str:
        return self._special_re.sub(lambda m: _MASK * len(m.group()), text)


def special_token_strings(tokenizer) -> list[str]:
    """The contents of every added token marked special (ChatML delimiters, vision markers, eos/pad, ...)."""
    backend = _backend(tokenizer)
    found = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    found.update(getattr(tokenizer, "all_special_tokens", ()) or ())
    return sorted(s for s in found if s)


def to_hf_conversation(messages: tuple[ChatMessage, ...]) -> list[dict]:
    """Our messages in the shape HF chat templates read: list content of {"type": "text"|"image"|"video"} parts."""
    return [{"role": msg.role, "content": [_hf_part(part) for part in msg.content]} for msg in messages]


def _hf_part(part) -> dict:
    if isinstance(part, ImageInput):
        return {"type": "image"}
    if isinstance(part, VideoInput):
        return {"type": "video"}
    return {"type": "text", "text": part}


def _backend(tokenizer):
    return getattr(tokenizer, "backend_tokenizer", None) or tokenizer._tokenizer


def _plain_tokenizer(tokenizer):
    """A copy of the Rust tokenizer that never parses special tokens (a copy: the shared one is used by other
    threads, and its encode_special_tokens switch is global state)."""
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(_backend(tokenizer).to_str())
    plain.encode_special_tokens = True
    return plain


def _mask_all(text: str) -> str:
    return "".join(c if c.isspace() else _MASK for c in text)


def _masked(messages: tuple[ChatMessage, ...], mask) -> tuple[ChatMessage, ...]:
    return tuple(replace(m, content=tuple(mask(p) if isinstance(p, str) else p for p in m.content))
                 for m in messages)
