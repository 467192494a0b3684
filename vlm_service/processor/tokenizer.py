"""Tokenizer: the locally built demo tokenizer and loading of a checkpoint's tokenizer.

The demo tokenizer is a small byte-level BPE trained at build time on a generated English corpus (no network), with
the Qwen pipeline (NFC, Qwen's split regex, byte-level) and Qwen's special tokens appended after the learned vocab.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

DEMO_VOCAB_SIZE = 1536

# A Qwen2-VL / Qwen3-VL style template: ChatML turns, list content with image and text parts, no default system turn.
DEMO_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_WORDS = (
    "the a an and or but of to in on at for with from by about as into over under after before between "
    "image picture photo cat dog bird car tree house street city river mountain sky cloud sun moon water "
    "red green blue yellow black white small large big little old new bright dark left right top bottom "
    "is are was were be been has have had do does did can could will would should may might describe "
    "what which who where when why how this that these those there here it they we you he she them "
    "person man woman child people hand face eye table chair window door book cup phone screen text "
    "sign number one two three four five six seven eight nine ten first second last many some all "
    "shows contains looks appears standing sitting walking running holding wearing near behind front "
    "answer question please thank yes no assistant user system model vision language token"
).split()


_SYLLABLES = "ka ro mi tes lan ber vo qui sta ple ny dor fa gen hul ix mon pra sel tor ung wil zed".split()


def _demo_corpus(num_lines: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English lines (~100 KB): common words, invented words, digits, punctuation."""
    rng = random.Random(seed)
    invented = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))) for _ in range(400)]
    vocab = list(_WORDS) * 3 + invented
    punct = [".", ",", "?", "!", ":", ";", "'s", " (", ")", " -", '"']
    lines = []
    for i in range(num_lines):
        words = [rng.choice(vocab) for _ in range(rng.randint(5, 16))]
        words[0] = words[0].capitalize()
        text = " ".join(w + (rng.choice(punct) if rng.random() < 0.1 else "") for w in words)
        lines.append(f"{text}{rng.choice(punct[:4])} {i}\n")
    return lines


def _build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=DEMO_VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_demo_corpus(), trainer=trainer)
    # Appended after training so the special ids sit at the end of the vocab, as in Qwen's tokenizer.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _tokenizer_config() -> dict:
    added = {}
    for token in SPECIAL_TOKENS:
        added[token] = {"content": token, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False}
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
        "extra_special_tokens": {},
        "chat_template": DEMO_CHAT_TEMPLATE,
    }


def build_demo_tokenizer(out_dir: Path) -> None:
    """Train the demo byte-level BPE locally and write tokenizer.json + tokenizer_config.json into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _build_tokenizer().save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2))


def load_tokenizer(model_dir: Path, chat_template: str | Path | None = None):
    """Load a checkpoint's fast tokenizer with the chat template transformers' processor would use.

    The processor's sources win over the tokenizer's inline template, in transformers' order: processor_config.json's
    "chat_template", then the legacy chat_template.json, then chat_template.jinja. `chat_template` (a jinja file,
    --chat-template) overrides them all.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    template = _read_processor_chat_template(model_dir)
    if chat_template:
        template = Path(chat_template).read_text()
    if template:
        tok.chat_template = template
    return tok


def _read_processor_chat_template(model_dir: Path) -> str | None:
    for name in ("processor_config.json", "chat_template.json"):
        path = model_dir / name
        if path.is_file():
            template = json.loads(path.read_text()).get("chat_template")
            if template:
                return _default_template(template)
    jinja = model_dir / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def _default_template(template) -> str:
    """A template may be a string, a {name: template} dict or a [{"name", "template"}] list: take the default."""
    if isinstance(template, list):
        template = {t["name"]: t["template"] for t in template}
    if isinstance(template, dict):
        return template.get("default") or next(iter(template.values()))
    return template


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the tokens the processor and engine need: image_pad, vision_start, vision_end, im_end, endoftext."""
    names = {
        "image_pad": "<|image_pad|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
        "im_end": "<|im_end|>",
        "endoftext": "<|endoftext|>",
    }
    ids = {}
    for key, token in names.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ValueError(f"tokenizer has no {token} token")
        ids[key] = int(token_id)
    return ids
