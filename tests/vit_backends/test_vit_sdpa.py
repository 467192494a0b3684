"""sdpa backend: batched equal-length segments give exactly the per-segment attention."""

import pytest
import torch

import vit_backends.sdpa as sdpa_mod
from _vit_reference import random_qkv, reference_attention
from vit_backends import create
from vit_backends.sdpa import length_groups
from vit_backends.shapes import qwen25_layers

MIXED = [64, 64, 7, 64, 1, 64, 32, 64, 64, 7, 1, 1, 100, 64, 7]  # equal lengths scattered, not back to back
LAYOUTS = {
    "mixed": MIXED,
    "singletons": [1] * 9,
    "window_like_equal": [64] * 24,                       # one back-to-back run: a zero-copy view
    "qwen25_windows_1024px": qwen25_layers([1024])["window"],  # 100 windows of 64 / 16 / 4 patches
}


@pytest.mark.parametrize("head_dim", [64, 72, 80, 128])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sdpa_matches_per_segment_reference(layout, head_dim):
    heads = 2 if layout == "qwen25_windows_1024px" else 3
    q, k, v, cu, max_len = random_qkv(LAYOUTS[layout], heads, head_dim, seed=head_dim)
    out = create("sdpa")(q, k, v, cu, max_len)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-5, rtol=1e-4)


def test_sdpa_bf16_within_tolerance():
    q, k, v, cu, max_len = random_qkv(MIXED, 4, 80, dtype=torch.bfloat16)
    out = create("sdpa")(q, k, v, cu, max_len)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-2, rtol=2e-2)


def test_empty_segments_are_skipped():
    q, k, v, _, _ = random_qkv([5, 9], 2, 64)
    cu = torch.tensor([0, 5, 5, 14, 14], dtype=torch.int32)  # two empty segments
    out = create("sdpa")(q, k, v, cu, 9)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-5, rtol=1e-4)


def test_one_sdpa_call_per_distinct_length(monkeypatch):
    lengths = qwen25_layers([2048])["window"]  # 361 windows, 3 distinct lengths
    calls = []
    real = sdpa_mod.F.scaled_dot_product_attention
    monkeypatch.setattr(sdpa_mod.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v, cu, max_len = random_qkv(lengths, 1, 8)
    create("sdpa")(q, k, v, cu, max_len)
    assert len(lengths) == 361 and len(calls) == len(set(lengths)) == 3


def test_length_groups_keeps_order_and_drops_empty():
    assert length_groups([0, 4, 4, 8, 9, 13]) == {4: [0, 4, 9], 1: [8]}


def test_groups_are_computed_once_per_cu_seqlens_object(monkeypatch):
    built = []
    real = sdpa_mod.make_groups
    monkeypatch.setattr(sdpa_mod, "make_groups", lambda cu: built.append(1) or real(cu))
    backend = create("sdpa")
    q, k, v, cu, max_len = random_qkv(MIXED, 2, 64)
    for _ in range(3):  # three "layers" with one cu_seqlens
        backend(q, k, v, cu, max_len)
    assert len(built) == 1
    backend(q, k, v, cu.clone(), max_len)  # another object: recomputed
    cu[1] = cu[2]  # in-place edit (segments 0 and 1 merged): seen
    out = backend(q, k, v, cu, max_len)
    assert len(built) == 3
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-5, rtol=1e-4)


def test_inference_mode_tensors_work():
    backend = create("sdpa")
    with torch.inference_mode():
        q, k, v, cu, max_len = random_qkv(MIXED, 2, 64)
        first = backend(q, k, v, cu, max_len)
        second = backend(q, k, v, cu, max_len)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first.double(), reference_attention(q, k, v, cu), atol=2e-5, rtol=1e-4)
