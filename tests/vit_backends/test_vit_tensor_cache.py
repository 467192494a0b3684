"""PerTensorCache keeps an entry exactly as long as its cu_seqlens tensor lives (a captured CUDA graph reads the
cached device tensors on every replay, so no other traffic may evict them)."""

import gc

import torch

from vit_backends.base import PerTensorCache


def test_entry_survives_any_number_of_other_tensors():
    cache, built = PerTensorCache(), []
    kept = torch.tensor([0, 4, 8], dtype=torch.int32)
    cache.get(kept, None, lambda: built.append("kept") or "value")
    for n in range(100):  # other encodes' cu_seqlens come and go
        cache.get(torch.tensor([0, n + 1], dtype=torch.int32), None, lambda: "other")
    assert cache.get(kept, None, lambda: built.append("again") or "rebuilt") == "value"
    assert built == ["kept"]


def test_entry_goes_with_its_tensor():
    cache = PerTensorCache()
    cu = torch.tensor([0, 4, 8], dtype=torch.int32)
    cache.get(cu, 1, lambda: "a")
    cache.get(cu, 2, lambda: "b")
    assert len(cache._entries) == 2
    del cu
    gc.collect()
    assert cache._entries == {}


def test_in_place_edit_rebuilds_and_replaces():
    cache = PerTensorCache()
    cu = torch.tensor([0, 4, 8], dtype=torch.int32)
    assert cache.get(cu, None, lambda: "old") == "old"
    cu[1] = 2
    assert cache.get(cu, None, lambda: "new") == "new"
    assert len(cache._entries) == 1
