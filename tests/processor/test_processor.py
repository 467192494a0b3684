import hashlib
import io

import pytest
import torch
from PIL import Image

from proc_images import encode, random_image
from proc_oracle import hf_inputs, hf_positions, hf_processor
from vlm_service.errors import InvalidImage, InvalidInput
from vlm_service.processor.processor import Processor, count_images
from vlm_service.types import ChatMessage, ImageInput

# Sizes not multiples of 28 or 32, non-square, one small enough to be scaled up, one large enough to be scaled down.
IMG_A = encode(random_image(123, 45, seed=1))
IMG_B = encode(random_image(70, 301, seed=2))
IMG_C = encode(random_image(517, 389, seed=3))
IMG_TINY = encode(random_image(9, 30, seed=4))  # under min_pixels: scaled up

CASES = {
    "text_only": (ChatMessage("user", ("Hello, who are you?",)),),
    "one_image": (ChatMessage("user", (ImageInput(IMG_C, "image/png"), "Describe this image.")),),
    "two_images": (
        ChatMessage("system", ("You are a careful assistant.",)),
        ChatMessage("user", ("Compare", ImageInput(IMG_A, "image/png"), "with", ImageInput(IMG_B, ""))),
    ),
    "image_after_text_multi_turn": (
        ChatMessage("user", ("What is this?", ImageInput(IMG_B, "image/png"))),
        ChatMessage("assistant", ("A tall picture.",)),
        ChatMessage("user", (ImageInput(IMG_A, ""), "And this one?")),
    ),
    "tiny_image_first": (ChatMessage("user", (ImageInput(IMG_TINY, ""), "Tiny?")),),
}


def _to_hf(messages):
    def part(p):
        if isinstance(p, ImageInput):
            return {"type": "image", "image": Image.open(io.BytesIO(p.data)).convert("RGB")}
        return {"type": "text", "text": p}

    return [{"role": m.role, "content": [part(p) for p in m.content]} for m in messages]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(model_dir, monkeypatch, case):
    messages = CASES[case]
    ours = Processor.from_pretrained(model_dir).process(messages)
    proc, model_cls = hf_processor(model_dir, monkeypatch)
    ref = hf_inputs(proc, _to_hf(messages))

    assert ours.input_ids == ref["input_ids"][0].tolist()
    positions, delta = hf_positions(model_cls, ref)
    assert torch.equal(ours.positions, positions)
    assert ours.mrope_delta == delta
    if count_images(messages) == 0:
        assert ours.images == [] and "pixel_values" not in ref
        return
    assert [list(img.grid_thw) for img in ours.images] == ref["image_grid_thw"].tolist()
    assert torch.equal(torch.cat([img.pixel_values for img in ours.images]), ref["pixel_values"])


def test_image_bookkeeping(model_dir):
    out = Processor.from_pretrained(model_dir).process(CASES["two_images"])
    pad = Processor.from_pretrained(model_dir).token_ids["image_pad"]
    assert len(out.visuals) == 2
    for img, data in zip(out.visuals, (IMG_A, IMG_B)):
        assert img.content_hash == hashlib.sha256(data).hexdigest()
        t, h, w = img.grid_thw
        assert img.num_tokens == t * h * w // 4 and img.pixel_values.shape[0] == t * h * w
        assert out.input_ids[img.offset:img.offset + img.num_tokens] == [pad] * img.num_tokens
        assert out.input_ids[img.offset - 1] != pad and out.input_ids[img.offset + img.num_tokens] != pad
    assert out.num_visual_tokens == sum(1 for t in out.input_ids if t == pad)
    assert out.positions.shape == (3, len(out.input_ids)) and out.positions.dtype == torch.int64
    assert out.preprocess_ms > 0


def _invalid(processor, messages, exc=InvalidInput):
    with pytest.raises(exc) as info:
        processor.process(messages)
    return info.value


@pytest.fixture()
def processor(model_dir):
    return Processor.from_pretrained(model_dir, max_images=2)


def test_validation_names_the_field(processor):
    assert _invalid(processor, ()).field == "messages"
    assert _invalid(processor, (ChatMessage("user", ("hi",)), ChatMessage("robot", ("x",)))).field == \
        "messages[1].role"
    assert _invalid(processor, (ChatMessage("user", ()),)).field == "messages[0].content"
    assert _invalid(processor, (ChatMessage("user", ("",)),)).field == "messages[0].content"
    err = _invalid(processor, (ChatMessage("user", ("a", "see <|image_pad|> here")),))
    assert err.field == "messages[0].content[1].text"


def test_too_many_images_refused_before_decoding(processor):
    junk = ImageInput(b"not an image", "")  # would fail decoding: the count check must come first
    msgs = (ChatMessage("user", (junk, junk, junk, "three")),)
    assert count_images(msgs) == 3
    err = _invalid(processor, msgs)
    assert not isinstance(err, InvalidImage) and "over the limit" in str(err)


def test_bad_image_error_names_its_field(processor):
    msgs = (ChatMessage("user", ("hi",)), ChatMessage("user", ("look", ImageInput(IMG_A, "image/png"),
                                                                ImageInput(IMG_A[:50], "image/png"))))
    assert _invalid(processor, msgs, InvalidImage).field == "messages[1].content[2].image"


def test_pixel_limit_applies(model_dir):
    small = Processor.from_pretrained(model_dir, max_pixels_limit=1000)
    msgs = (ChatMessage("user", (ImageInput(IMG_A, "image/png"),)),)  # 123 x 45 = 5535 pixels
    assert "over the limit" in str(_invalid(small, msgs, InvalidImage))
