"""--chat-template: a jinja file replaces the checkpoint's chat template in the processor's rendering."""

from __future__ import annotations

from vlm_service.processor.processor import Processor
from vlm_service.types import ChatMessage

# the same turn structure with a marker the checkpoint's template never writes
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\nOVERRIDE {% for c in m.content %}"
            "{% if c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_file_overrides_the_checkpoint(model_dir, tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    messages = (ChatMessage("user", ("hello there",)),)
    default = Processor.from_pretrained(model_dir)
    custom = Processor.from_pretrained(model_dir, chat_template=path)
    assert custom.tokenizer.chat_template == TEMPLATE != default.tokenizer.chat_template
    ids = custom.process(messages).input_ids
    assert ids != default.process(messages).input_ids
    assert "OVERRIDE hello there" in custom.tokenizer.decode(ids)
