"""The towers' metadata/compute split (exactly the old forward; compute free of host work) and VisionGraphRunner's key
and LRU logic with a fake capture, on CPU. The real CUDA-graph capture is tested in test_vision_graphs_gpu.py."""

from __future__ import annotations

import logging

import pytest
import torch
from vision_tiny_helpers import GRIDS, pixels_for, tiny_model, tiny_tower

import vit_backends
from vlm_service.models.qwen2_5_vl_vision import cu_seqlens_of, window_partition
from vlm_service.models.qwen3_vl_vision import frame_cu_seqlens, pos_interp, rotary_cos_sin
from vlm_service.models.vision_graphs import ENV_SWITCH, Captured, VisionGraphRunner

ARCHS = ("qwen2_5_vl", "qwen3_vl")


# ---- the forwards as they were before the split (one function each), the reference ---------------------------------

def unfused_block(block, x, *attn_args):
    """A vision block as it was before the residual stream was split into (branch, residual): two plain adds."""
    x = x + block.attn(block.norm1(x), *attn_args)
    return x + block.mlp(block.norm2(x))


def qwen25_forward_before_split(tower, pixels, grid_thw):
    device, grid = pixels.device, grid_thw.cpu()
    index, win_units = window_partition(grid, tower.merge, tower.units_per_window)
    index = index.to(device)
    cu_win, max_win = cu_seqlens_of([n * tower.merge ** 2 for n in win_units], device)
    cu_full, max_full = cu_seqlens_of([h * w for t, h, w in grid.tolist() for _ in range(t)], device)
    x = tower._by_unit(tower.patch_embed(pixels), index)
    cos, sin = (tower._by_unit(c, index) for c in tower._rope(grid, device))
    for i, block in enumerate(tower.blocks):
        cu, longest = (cu_full, max_full) if i in tower.fullatt else (cu_win, max_win)
        x = unfused_block(block, x, cos, sin, cu, longest)
    merged = tower.merger(x)[torch.argsort(index)]
    return [(e, []) for e in merged.split((grid_thw.prod(-1) // tower.merge ** 2).tolist())]


def qwen3_forward_before_split(tower, pixel_values, grid_thw):
    device = tower.pos_embed.weight.device
    x = tower.patch_embed(pixel_values.to(device))
    idx, wts = pos_interp(grid_thw, tower.side, tower.merge, device)
    x = x + (tower.pos_embed(idx).float() * wts[:, :, None]).sum(1).to(x.dtype)
    cos, sin = rotary_cos_sin(grid_thw, tower.merge, tower.inv_freq)
    cu, max_len = frame_cu_seqlens(grid_thw, device)
    deepstack = []
    for i, block in enumerate(tower.blocks):
        x = unfused_block(block, x, cu, max_len, cos, sin)
        if i in tower.deepstack_indexes:
            deepstack.append(tower.deepstack_merger_list[tower.deepstack_indexes.index(i)](x))
    embeds, sizes = tower.merger(x), (grid_thw.prod(-1) // tower.merge ** 2).tolist()
    return [(e, [d.split(sizes)[i] for d in deepstack]) for i, e in enumerate(embeds.split(sizes))]


def before_split(arch, tower, pixels, grid):
    return (qwen25_forward_before_split if arch == "qwen2_5_vl" else qwen3_forward_before_split)(tower, pixels, grid)


def split_outputs(arch, tower, meta, outputs):
    """compute's outputs -> per image (embeds, deepstack), as encode_images returns them."""
    if arch == "qwen2_5_vl":
        return [(e, []) for e in outputs[0].split(meta.sizes)]
    return tower.split(outputs, meta.sizes)


def assert_same(got, want):
    assert len(got) == len(want)
    for (e, ds), (e_want, ds_want) in zip(got, want):
        assert torch.equal(e, e_want)
        assert len(ds) == len(ds_want) and all(torch.equal(a, b) for a, b in zip(ds, ds_want))


@pytest.fixture(scope="module", params=ARCHS)
def arch_tower(request):
    return request.param, tiny_tower(request.param, vit_backends.create("sdpa"))


def _metadata(arch, tower, grid):
    return tower.metadata(grid, torch.device("cpu")) if arch == "qwen2_5_vl" else tower.metadata(grid)


# ---- the split ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@torch.no_grad()
def test_split_forward_equals_the_old_forward_exactly(arch_tower, grid_name):
    arch, tower = arch_tower
    grid = torch.tensor(GRIDS[grid_name])
    pixels = pixels_for(arch, GRIDS[grid_name], seed=1)
    meta = _metadata(arch, tower, grid)
    assert_same(split_outputs(arch, tower, meta, tower.compute(pixels, meta)), before_split(arch, tower, pixels, grid))


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@torch.no_grad()
def test_metadata_is_reusable_across_pixels(arch_tower, grid_name):
    """What a CUDA graph relies on: metadata built once serves every later set of pixels of the same grids."""
    arch, tower = arch_tower
    grid = torch.tensor(GRIDS[grid_name])
    meta = _metadata(arch, tower, grid)
    tower.compute(pixels_for(arch, GRIDS[grid_name], seed=2), meta)
    fresh = pixels_for(arch, GRIDS[grid_name], seed=3)
    assert_same(split_outputs(arch, tower, meta, tower.compute(fresh, meta)), before_split(arch, tower, fresh, grid))


def _forbid(*_args, **_kwargs):
    raise AssertionError("host work inside the compute step")


@torch.no_grad()
def test_compute_does_no_host_work_once_backends_are_warm(arch_tower, monkeypatch):
    """No syncs (.tolist/.item/.cpu/int()/bool()) and no tensors from Python lists: what a capture forbids."""
    arch, tower = arch_tower
    grid = GRIDS["three_clipped_windows"]
    meta = _metadata(arch, tower, torch.tensor(grid))
    pixels = pixels_for(arch, grid, seed=4)
    tower.compute(pixels, meta)  # sdpa builds its per-cu_seqlens groups here (one sync), as the graph warm-up does
    for name in ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, _forbid)
    monkeypatch.setattr(torch, "tensor", _forbid)
    outputs = tower.compute(pixels, meta)
    monkeypatch.undo()
    assert outputs[0].shape[0] == sum(t * h * w for t, h, w in grid) // 4


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_encode_images_through_the_runner_equals_eager(arch):
    """The models' wiring: seen, captured (fake), replayed with new pixels, each equal to the eager encode."""
    model = tiny_model(arch, vit_backends.create("sdpa"))
    grid = torch.tensor(GRIDS["two_non_square"])
    model.vision_graphs = VisionGraphRunner(capture=FakeCapture())
    got = [model.encode_images(pixels_for(arch, GRIDS["two_non_square"], seed=s), grid) for s in range(4)]
    assert model.vision_graphs.counts() == {"seen": 0, "graph": 1, "eager_only": 0, "replays": 2}
    model.vision_graphs.enabled = False
    for s, result in enumerate(got):
        assert_same(result, model.encode_images(pixels_for(arch, GRIDS["two_non_square"], seed=s), grid))


# ---- VisionGraphRunner --------------------------------------------------------------------------------------------

class FakeCapture:
    """CudaGraphCapture's stand-in on CPU: capturing runs once and keeps the output buffers; replay runs again and
    writes into those same buffers, as a graph replay does. mode: "ok", "raise" (capture fails) or "garbage" (replay
    writes wrong values)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.captures = 0

    def supports(self, device: torch.device) -> bool:
        return True

    def __call__(self, run, device):
        self.captures += 1
        if self.mode == "raise":
            raise RuntimeError("operation not permitted when stream is capturing")
        outputs = run()

        def replay():
            with torch.inference_mode():  # a graph writes raw memory, whatever mode the buffers were made in
                for buf, new in zip(outputs, run()):
                    buf.copy_(new if self.mode == "ok" else torch.full_like(new, 7.0))
        return Captured(replay, outputs)


class Toy:
    """A 'tower': metadata is a scale per grid, compute scales the pixels; counts prepare() calls."""

    def __init__(self):
        self.prepared = 0
        self.computed = 0

    def prepare(self):
        self.prepared += 1
        return torch.tensor(2.0)

    def compute(self, pixels, meta):
        self.computed += 1
        return [pixels * meta, pixels.sum(0, keepdim=True)]


def _run(runner, toy, pixels, grid=((1, 2, 2),), backends=("sdpa",)):
    return runner.run(pixels, grid, backends, toy.prepare, toy.compute)[1]


def test_first_sight_eager_second_captures_third_replays():
    toy, capture = Toy(), FakeCapture()
    runner = VisionGraphRunner(capture=capture)
    x = torch.arange(8.0).view(4, 2)
    first = _run(runner, toy, x)
    assert capture.captures == 0 and runner.counts()["seen"] == 1
    second = _run(runner, toy, x + 1)
    assert capture.captures == 1 and runner.counts()["graph"] == 1
    prepared = toy.prepared
    third = _run(runner, toy, x + 2)
    assert toy.prepared == prepared and runner.counts()["replays"] == 1  # no metadata rebuilt on replay
    for k, out in enumerate((first, second, third)):
        assert torch.equal(out[0], (x + k) * 2) and torch.equal(out[1], (x + k).sum(0, keepdim=True))


def test_replayed_outputs_are_clones():
    toy, capture = Toy(), FakeCapture()
    runner = VisionGraphRunner(capture=capture)
    x = torch.ones(4, 2)
    for _ in range(2):
        _run(runner, toy, x)
    a = _run(runner, toy, x)
    b = _run(runner, toy, 3 * x)
    assert torch.equal(a[0], 2 * x) and torch.equal(b[0], 6 * x)  # the second replay did not rewrite the first result
    assert a[0].data_ptr() != b[0].data_ptr()


def test_capture_in_inference_mode_replays_outside_it():
    toy, runner = Toy(), VisionGraphRunner(capture=FakeCapture())
    x = torch.ones(4, 2)
    with torch.inference_mode():
        for _ in range(2):
            _run(runner, toy, x)
    with torch.no_grad():
        assert torch.equal(_run(runner, toy, 2 * x)[0], 4 * x)
    assert runner.counts()["replays"] == 1


def test_least_recently_used_key_is_evicted():
    toy, capture = Toy(), FakeCapture()
    runner = VisionGraphRunner(capacity=2, capture=capture)
    x = torch.ones(4, 2)
    grids = {name: ((1, 2, 2), (1, n, 2)) for n, name in ((2, "a"), (4, "b"), (6, "c"))}
    for name in ("a", "a", "b", "a", "c"):  # a: seen, captured; b seen; a used again; c seen -> b (LRU) goes
        _run(runner, toy, x, grids[name])
    assert runner.counts() == {"seen": 1, "graph": 1, "eager_only": 0, "replays": 1}
    _run(runner, toy, x, grids["b"])  # b is new again: eager, and evicts a (c was used after a)
    assert capture.captures == 1 and runner.counts()["graph"] == 0
    _run(runner, toy, x, grids["a"])
    assert capture.captures == 1  # a was forgotten: first sight again


def test_encodes_over_the_patch_cap_run_eagerly_and_take_no_slot():
    # a large batch is GPU-bound: no capture, and it must not push the small (launch-bound) keys out of the LRU
    toy, capture = Toy(), FakeCapture()
    runner = VisionGraphRunner(capacity=1, capture=capture, max_patches=4)
    small, large = torch.ones(4, 2), torch.ones(6, 2)
    for _ in range(2):
        _run(runner, toy, small)
    assert capture.captures == 1
    for k in range(3):
        out = _run(runner, toy, large * k, ((1, 2, 3),))
        assert torch.equal(out[0], large * k * 2)
    assert capture.captures == 1 and runner.counts() == {"seen": 0, "graph": 1, "eager_only": 0, "replays": 0}
    _run(runner, toy, small)
    assert runner.counts()["replays"] == 1  # the small key survived the large encodes


def test_key_holds_dtype_shape_and_backend_identity():
    toy, capture = Toy(), FakeCapture()
    runner = VisionGraphRunner(capture=capture)
    x = torch.ones(4, 2)
    one, other = object(), object()
    _run(runner, toy, x, backends=(one,))
    _run(runner, toy, x.double(), backends=(one,))
    _run(runner, toy, x, backends=(other,))
    _run(runner, toy, torch.ones(4, 3), backends=(one,))
    assert capture.captures == 0 and runner.counts()["seen"] == 4
    _run(runner, toy, x, backends=(one,))
    assert capture.captures == 1


@pytest.mark.parametrize("mode", ["raise", "garbage"])
def test_failed_capture_warns_once_and_the_key_stays_eager(mode, caplog):
    toy, capture = Toy(), FakeCapture(mode)
    runner = VisionGraphRunner(capture=capture)
    x = torch.arange(8.0).view(4, 2)
    with caplog.at_level(logging.WARNING, logger="vlm_service.models.vision_graphs"):
        results = [_run(runner, toy, x + k) for k in range(5)]
    assert capture.captures == 1
    assert runner.counts() == {"seen": 0, "graph": 0, "eager_only": 1, "replays": 0}
    assert len([r for r in caplog.records if "ViT CUDA graph" in r.getMessage()]) == 1
    for k, out in enumerate(results):
        assert torch.equal(out[0], (x + k) * 2)


def test_switch_off_runs_eagerly(monkeypatch):
    x = torch.ones(4, 2)
    monkeypatch.setenv(ENV_SWITCH, "0")
    by_env, by_arg = VisionGraphRunner(capture=FakeCapture()), VisionGraphRunner(enabled=False, capture=FakeCapture())
    monkeypatch.setenv(ENV_SWITCH, "1")
    on = VisionGraphRunner(capture=FakeCapture())
    for runner in (by_env, by_arg, on):
        for _ in range(3):
            _run(runner, Toy(), x)
    assert by_env.counts()["seen"] == by_arg.counts()["seen"] == 0 and by_env._capture.captures == 0
    assert on.enabled and on.counts()["replays"] == 1


def test_real_capture_is_never_tried_on_cpu():
    toy, runner = Toy(), VisionGraphRunner()
    x = torch.ones(4, 2)
    for _ in range(3):
        assert torch.equal(_run(runner, toy, x)[0], 2 * x)
    assert runner.counts() == {"seen": 0, "graph": 0, "eager_only": 0, "replays": 0} and toy.computed == 3
