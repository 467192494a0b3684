"""ViT CUDA graphs on the GPU: replayed encodes equal eager ones for both towers (bf16, each usable backend), several
keys share one memory pool, eviction frees graphs safely, and a failed capture leaves the device usable.

Run on the GPU host: pytest tests/models/test_vision_graphs_gpu.py -m gpu
"""

from __future__ import annotations

import pytest
import torch
from vision_tiny_helpers import GRIDS, pixels_for, tiny_model

import vit_backends
from vlm_service.models.vision_graphs import VisionGraphRunner

pytestmark = pytest.mark.gpu

ARCHS = ("qwen2_5_vl", "qwen3_vl")


def _model(arch: str, backend: str):
    if backend not in vit_backends.usable():
        pytest.skip(f"{backend} not usable here")
    model = tiny_model(arch, vit_backends.create(backend), torch.bfloat16, "cuda")
    model.vision_graphs = VisionGraphRunner(enabled=True)  # whatever VLM_VIT_CUDA_GRAPHS says
    return model


def _encode(model, arch: str, grid_name: str, seed: int):
    rows = GRIDS[grid_name]
    return model.encode_images(pixels_for(arch, rows, seed, torch.bfloat16, "cuda"), torch.tensor(rows, device="cuda"))


def _eager(model, arch: str, grid_name: str, seed: int):
    runner, model.vision_graphs = model.vision_graphs, VisionGraphRunner(enabled=False)
    try:
        return _encode(model, arch, grid_name, seed)
    finally:
        model.vision_graphs = runner


def _assert_close(got, want):
    assert len(got) == len(want)
    for (e, ds), (e_want, ds_want) in zip(got, want):
        torch.testing.assert_close(e.float(), e_want.float(), atol=2e-2, rtol=2e-2)
        assert len(ds) == len(ds_want)
        for a, b in zip(ds, ds_want):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", ["sdpa", "fa3", "auto"])
@pytest.mark.parametrize("arch", ARCHS)
def test_replay_equals_eager(arch, backend):
    model = _model(arch, backend)
    got = [_encode(model, arch, "three_clipped_windows", seed) for seed in range(4)]  # seen, captured, 2 replays
    assert model.vision_graphs.counts() == {"seen": 0, "graph": 1, "eager_only": 0, "replays": 2}
    for seed, result in enumerate(got):  # the first replay's result survived the second replay
        _assert_close(result, _eager(model, arch, "three_clipped_windows", seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_flashinfer_cudnn_replays_or_falls_back_correctly(arch):
    """cuDNN through FlashInfer may or may not be capturable; either way the results must be right."""
    model = _model(arch, "flashinfer_cudnn")
    got = [_encode(model, arch, "two_non_square", seed) for seed in range(3)]
    for seed, result in enumerate(got):
        _assert_close(result, _eager(model, arch, "two_non_square", seed))
    print("flashinfer_cudnn", arch, model.vision_graphs.counts())


@pytest.mark.parametrize("arch", ARCHS)
def test_keys_share_the_pool_and_eviction_is_safe(arch):
    model = _model(arch, "sdpa")
    model.vision_graphs = VisionGraphRunner(capacity=2, enabled=True)
    order = ["one_image", "one_image", "two_frames", "two_frames"] + ["one_image", "two_frames"] * 2 + \
        ["three_clipped_windows", "three_clipped_windows", "two_frames"]  # the third key evicts one_image's graph
    got = [(name, seed, _encode(model, arch, name, seed)) for seed, name in enumerate(order)]
    counts = model.vision_graphs.counts()
    assert counts["graph"] == 2 and counts["replays"] == 5, counts
    for name, seed, result in got:
        _assert_close(result, _eager(model, arch, name, seed))


def test_failed_capture_leaves_the_device_usable():
    """A host sync inside compute breaks the capture: warn, run eagerly, and keep the caller's stream working."""
    runner = VisionGraphRunner(enabled=True)
    caller = torch.cuda.current_stream()

    def compute(pixels, meta):
        return [pixels * meta * float(pixels.abs().sum() > 0)]  # float(): a sync, forbidden while capturing

    x = torch.randn(64, 8, device="cuda")
    results = [runner.run(x + k, [[1, 8, 8]], (), lambda: torch.full((), 2.0, device="cuda"), compute)[1][0]
               for k in range(3)]
    assert runner.counts()["eager_only"] == 1
    assert torch.cuda.current_stream() == caller and not torch.cuda.is_current_stream_capturing()
    for k, out in enumerate(results):
        torch.testing.assert_close(out, (x + k) * 2)
    ok = VisionGraphRunner(enabled=True)  # the next capture on this device still works
    for k in range(3):
        out = ok.run(x + k, [[1, 8, 8]], (), lambda: torch.full((), 3.0, device="cuda"),
                     lambda pixels, meta: [pixels * meta])[1][0]
        torch.testing.assert_close(out, (x + k) * 3)
    assert ok.counts()["replays"] == 1
    torch.cuda.synchronize()
