import io
import json

import numpy as np
import pytest
from PIL import Image

from vlm_service.bench.dataset import DatasetSpec, TextMaker, build_dataset, parse_range
from vlm_service.demo.images import ResolutionSampler, make_image


def test_parse_range():
    assert parse_range("5") == (5, 5)
    assert parse_range("2-7") == (2, 7)
    for bad in ("7-2", "x", "-1"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_resolution_specs():
    rng = np.random.default_rng(0)
    assert ResolutionSampler("720p").sample(rng) == (720, 1280)
    assert ResolutionSampler("4k").sample(rng) == (2160, 3840)
    assert ResolutionSampler("100x200").sample(rng) == (100, 200)
    sizes = {ResolutionSampler("10x20:30x40").sample(rng) for _ in range(50)}
    assert all(10 <= h <= 30 and 20 <= w <= 40 for h, w in sizes) and len(sizes) > 5
    assert {ResolutionSampler("360p,8x8").sample(rng) for _ in range(40)} == {(360, 640), (8, 8)}
    for bad in ("720", "0x5", "30x30:10x10", "bogus"):
        with pytest.raises(ValueError):
            ResolutionSampler(bad)


@pytest.mark.parametrize("fmt,magic", [("jpeg", b"\xff\xd8\xff"), ("png", b"\x89PNG")])
@pytest.mark.parametrize("content", ["noise", "blank"])
def test_make_image_encodes_requested_size_and_format(fmt, magic, content):
    item = make_image(np.random.default_rng(1), 24, 40, content, fmt)
    assert item.data.startswith(magic) and item.mime_type == f"image/{fmt}"
    img = Image.open(io.BytesIO(item.data))
    assert img.size == (40, 24) and item.pixels == 960
    colours = len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0))
    assert colours <= 4 if content == "blank" else colours > 100


def test_synthetic_dataset_is_seeded_and_respects_ranges():
    spec = DatasetSpec(num_requests=6, seed=3, images_per_request=(0, 2), resolution="16x16:32x32",
                       input_len=(5, 9), output_len=(3, 4))
    a, b = build_dataset(spec), build_dataset(spec)
    assert len(a) == 6
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert [im.data for r in a for im in r.images] == [im.data for r in b for im in r.images]
    assert all(0 <= len(r.images) <= 2 and 5 <= len(r.prompt.split()) <= 9 for r in a)
    assert all(r.min_tokens == r.max_tokens and 3 <= r.max_tokens <= 4 for r in a)
    other = build_dataset(DatasetSpec(num_requests=6, seed=4, images_per_request=(1, 1), resolution="16x16"))
    assert [r.prompt for r in other] != [r.prompt for r in a]


def test_text_with_a_tokenizer_has_the_exact_token_count(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vlm_service.bench.dataset import _WORDS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" ".join(_WORDS[i:i + 7]) for i in range(0, len(_WORDS), 3)],
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    maker = TextMaker(tmp_path)
    for n in (1, 11, 40):
        text = maker.make(np.random.default_rng(n), n)
        assert len(maker.tokenizer.encode(text, add_special_tokens=False).ids) == n


def test_folder_and_jsonl_datasets(tmp_path):
    for i, size in enumerate([(10, 12), (20, 8)]):
        Image.new("RGB", size, (i, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = build_dataset(DatasetSpec(kind="folder", path=tmp_path, num_requests=3, images_per_request=(2, 2)))
    assert len(folder) == 3 and all(len(r.images) == 2 for r in folder)
    assert {im.pixels for r in folder for im in r.images} == {120, 160}
    rows = [{"prompt": "describe", "images": ["im0.png"]}, {"prompt": "text only", "max_tokens": 5}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reqs = build_dataset(DatasetSpec(kind="jsonl", path=tmp_path / "p.jsonl", num_requests=3, output_len=(7, 7)))
    assert [r.prompt for r in reqs] == ["describe", "text only", "describe"]
    assert [len(r.images) for r in reqs] == [1, 0, 1] and [r.max_tokens for r in reqs] == [7, 5, 7]
    with pytest.raises(ValueError):
        build_dataset(DatasetSpec(kind="folder", path=tmp_path / "missing"))
