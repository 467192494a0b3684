"""resize_banded: PIL's resize computed in bands on the band pool must be PIL's single resize, byte for byte."""

import random
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from proc_images import random_image
from vlm_service.processor import vision
from vlm_service.processor.vision import ImageConfig, preprocess_image, resize_banded
from vlm_service.processor.family_rules import demo_image_config

R = Image.Resampling
FILTERS = [R.BICUBIC, R.BILINEAR, R.LANCZOS, R.BOX, R.HAMMING, R.NEAREST]


@pytest.fixture
def count_bands(monkeypatch):
    """Band every size (no pixel threshold) and count the banded passes run through the pool."""
    monkeypatch.setattr(vision, "BAND_MIN_PIXELS", 0)
    calls = []
    run_bands = vision._run_bands

    def counting(fn, spans):
        calls.append(len(spans))
        return run_bands(fn, spans)

    monkeypatch.setattr(vision, "_run_bands", counting)
    return calls


def _shapes(n: int, seed: int):
    """Seeded (src w, h, dst w, h): general, one axis kept, both up and down, and extreme aspect ratios."""
    rng = random.Random(seed)
    for i in range(n):
        sw, sh, dw, dh = (rng.randint(20, 2500) for _ in range(4))
        if i % 6 == 1:
            dw = sw  # vertical pass only
        elif i % 6 == 2:
            dh = sh  # horizontal pass only
        elif i % 6 == 3:  # thin source (PIL resizes tall images vertically first)
            sw, sh, dw = rng.randint(1, 20), rng.randint(2100, 2500), rng.randint(1, 60)
            if rng.random() < 0.5:
                sw, sh, dw, dh = sh, sw, dh, dw
        yield sw, sh, dw, dh


@pytest.mark.parametrize("seed", range(3))
def test_banded_resize_is_pils_single_resize(count_bands, seed):
    rng = random.Random(100 + seed)
    banded = 0
    for i, (sw, sh, dw, dh) in enumerate(_shapes(24, seed)):
        resample = FILTERS[i % len(FILTERS)]
        img = random_image(sw, sh, seed=i, mode="L" if i % 7 == 0 else "RGB")
        before = len(count_bands)
        got = resize_banded(img, (dw, dh), resample, bands=rng.choice([2, 3, 4, 7]))
        ref = img.resize((dw, dh), resample=resample)
        assert (got.mode, got.size) == (ref.mode, ref.size)
        assert got.tobytes() == ref.tobytes(), (sw, sh, dw, dh, resample.name)
        banded += len(count_bands) > before
    assert banded >= 12  # most shapes went through bands (NEAREST and very tall downscales do not)


@pytest.mark.parametrize("resample", [R.BICUBIC, R.LANCZOS])
def test_banded_resize_of_the_qwen_sizes(resample):
    img = random_image(1024, 1024, seed=3)
    for size in [(1036, 1036), (812, 1204), (1024, 448)]:
        got = resize_banded(img, size, resample, bands=4)
        assert got.tobytes() == img.resize(size, resample=resample).tobytes()


def test_unchanged_size_is_the_image_itself(count_bands):
    img = random_image(600, 500)
    assert resize_banded(img, (600, 500), R.BICUBIC) is img
    assert count_bands == []


def test_small_outputs_and_one_band_resize_in_one_call(monkeypatch):
    calls = []
    monkeypatch.setattr(vision, "_run_bands", lambda fn, spans: calls.append(spans))
    img = random_image(300, 200)
    assert resize_banded(img, (100, 80), R.BICUBIC).tobytes() == img.resize((100, 80), R.BICUBIC).tobytes()
    assert resize_banded(img, (1000, 900), R.BICUBIC, bands=1).size == (1000, 900)
    assert calls == []


def test_band_errors_reach_the_caller():
    def fn(lo, hi):
        if lo:
            raise RuntimeError(f"band {lo}")

    with pytest.raises(RuntimeError, match="band"):
        vision._run_bands(fn, vision._spans(10, 3))


def test_spans_cover_the_range_once():
    for total in range(0, 40):
        for parts in range(1, 9):
            spans = vision._spans(total, parts)
            assert [i for lo, hi in spans for i in range(lo, hi)] == list(range(total))
            assert len(spans) <= parts and all(hi > lo for lo, hi in spans)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_preprocess_from_many_threads_equals_one_thread(arch):
    # as the server calls it: a pool of preprocess threads, each handing bands to the shared band pool
    cfg = ImageConfig.from_dict(demo_image_config(arch, True))
    images = [random_image(900 + 37 * i, 700 + 53 * i, seed=i) for i in range(8)]
    ref = [preprocess_image(img, cfg)[0] for img in images]
    results = [None] * len(images)

    def work(i):
        results[i] = preprocess_image(images[i], cfg, torch.bfloat16)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(not t.is_alive() for t in threads)
    for got, want in zip(results, ref):
        assert torch.equal(got, want.to(torch.bfloat16))


def test_lookup_and_layout_in_bands_equal_one_band(monkeypatch):
    cfg = ImageConfig.from_dict(demo_image_config("qwen2_5_vl", True))
    img = random_image(1024, 1024, seed=9)
    banded, grid = preprocess_image(img, cfg)
    monkeypatch.setattr(vision, "BAND_THREADS", 1)
    single, grid1 = preprocess_image(img, cfg)
    assert grid == grid1 == (1, 74, 74)
    assert torch.equal(banded, single)
    assert np.isfinite(banded.numpy()).all()


def test_caller_runs_the_bands_a_busy_pool_has_not_started():
    # every band worker stuck on other work: the caller takes its queued bands back instead of waiting on them
    release = threading.Event()
    pool = vision._band_executor()
    blockers = [pool.submit(release.wait, 30) for _ in range(vision.BAND_THREADS)]
    try:
        done, ran_on, start = [], [], time.monotonic()
        vision._run_bands(lambda lo, hi: (done.append(lo), ran_on.append(threading.get_ident())), vision._spans(8, 4))
        assert sorted(done) == [0, 2, 4, 6] and set(ran_on) == {threading.get_ident()}
        assert time.monotonic() - start < 10  # did not wait for the stuck workers
    finally:
        release.set()
    assert all(b.result(timeout=30) for b in blockers)


def test_bands_only_while_no_other_image_is_preprocessed(count_bands, monkeypatch):
    # under load every preprocess thread is busy: bands would only add GIL hand-offs, so a call made while another
    # is in flight runs in one piece (and still gives the same values)
    monkeypatch.setattr(vision, "BAND_THREADS", 4)
    cfg = ImageConfig.from_dict(demo_image_config("qwen2_5_vl", True))
    img = random_image(1024, 1024, seed=4)
    alone = preprocess_image(img, cfg)[0]
    assert max(count_bands) == 4
    count_bands.clear()
    with vision._Preprocessing() as first:
        assert first
        busy = preprocess_image(img, cfg)[0]
    assert count_bands and max(count_bands) == 1
    assert torch.equal(alone, busy)
    count_bands.clear()
    preprocess_image(img, cfg)
    assert max(count_bands) == 4  # the counter went back down
