from transformers import AutoTokenizer

from vlm_service.processor.tokenizer import DEMO_VOCAB_SIZE, SPECIAL_TOKENS, build_demo_tokenizer, load_tokenizer, \
    special_token_ids

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]},
]


def test_demo_tokenizer_loads_with_auto_tokenizer(tmp_path):
    build_demo_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == DEMO_VOCAB_SIZE
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for token in SPECIAL_TOKENS:  # each special token is one id, never split
        assert len(tok(token)["input_ids"]) == 1


def test_chat_template_renders_qwen_turns(tmp_path):
    build_demo_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in this picture?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template(CHAT, add_generation_prompt=False, tokenize=False).endswith("assistant\n")


def test_round_trip_and_special_ids(tmp_path):
    build_demo_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    text = "Describe the image: a red cat, 42 birds — ünïcode ✓"
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = special_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids["image_pad"]) == "<|image_pad|>"
    assert len(set(ids.values())) == 5


def test_build_is_deterministic(tmp_path):
    build_demo_tokenizer(tmp_path / "a")
    build_demo_tokenizer(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_chat_template_from_jinja_file(tmp_path):
    build_demo_tokenizer(tmp_path)
    import json

    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "chat_template.jinja").write_text(cfg.pop("chat_template"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(tmp_path)
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False).endswith("<|im_start|>assistant\n")


def test_processor_chat_template_file_wins_over_inline(tmp_path):
    import json

    build_demo_tokenizer(tmp_path)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "LEGACY{{ messages[0]['role'] }}"}))
    assert load_tokenizer(tmp_path).apply_chat_template(CHAT, tokenize=False) == "LEGACYsystem"
