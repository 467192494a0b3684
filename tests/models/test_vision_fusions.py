"""The towers' fused layout (issue 17): q/k/v reach a backend that takes strided inputs as views of the qkv
projection (no copies), packed only for a backend that asks for it, with the same output; the residual stream
carried into the norms and the GELU epilogue leave the tower's output as the unfused ops give it (CPU here; CUDA in
the gpu-marked tests, against the same tower run through the unfused path)."""

from __future__ import annotations

import pytest
import torch
from vision_tiny_helpers import GRIDS, pixels_for, tiny_tower

import vit_backends
from vit_backends.sdpa import SdpaAttention

ARCHS = ("qwen2_5_vl", "qwen3_vl")


class Recording(SdpaAttention):
    """sdpa that records whether each call's q, k, v were packed [T, H, D]."""

    def __init__(self, needs_contiguous: bool):
        super().__init__()
        self.needs_contiguous = needs_contiguous
        self.packed: list[bool] = []

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        self.packed.append(all(t.is_contiguous() for t in (q, k, v)))
        return super().forward(q, k, v, cu_seqlens, max_seqlen)


def _set_backend(tower, backend) -> None:
    for block in tower.blocks:
        block.attn.backend = backend


def _run(arch, tower, rows, seed=0, dtype=torch.float32, device="cpu"):
    pixels = pixels_for(arch, rows, seed, dtype, device)
    return tower(pixels, torch.tensor(rows, device=device))


def _flat(out):
    # qwen2.5: [tokens, hidden]; qwen3: per image (embeds, deepstack list)
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for e, ds in out for t in (e, *ds)]


def unfused_forward(arch, tower, pixels, grid):
    """The tower through the ops as they were: q/k/v copied packed, plain residual adds, GELU as its own op."""
    import torch.nn.functional as F
    from kernels import apply_rotary_

    def attn(a, x, cos, sin, cu, longest):
        t = x.shape[0]
        q, k, v = (p.contiguous() for p in a.qkv(x).view(t, 3, a.heads, a.head_dim).unbind(1))
        apply_rotary_(q, k, cos, sin)
        return a.proj(a.backend(q, k, v, cu, longest).reshape(t, -1))

    def mlp(m, x):
        if arch == "qwen2_5_vl":
            return m(x)
        return m.linear_fc2(F.gelu(m.linear_fc1(x), approximate="tanh"))

    if arch == "qwen2_5_vl":
        meta = tower.metadata(grid, pixels.device)
        x = tower._by_unit(tower.patch_embed(pixels), meta.index)
        for i, b in enumerate(tower.blocks):
            cu, longest = (meta.cu_full, meta.max_full) if i in tower.fullatt else (meta.cu_window, meta.max_window)
            x = x + attn(b.attn, b.norm1(x), meta.cos, meta.sin, cu, longest)
            x = x + mlp(b.mlp, b.norm2(x))
        return [tower.merger(x)[meta.inverse]]
    meta = tower.metadata(grid)
    x = tower.patch_embed(pixels)
    x = x + (tower.pos_embed(meta.pos_index).float() * meta.pos_weight[:, :, None]).sum(1).to(x.dtype)
    deepstack = []
    for i, b in enumerate(tower.blocks):
        x = x + attn(b.attn, b.norm1(x), meta.cos, meta.sin, meta.cu_seqlens, meta.max_seqlen)
        x = x + mlp(b.mlp, b.norm2(x))
        if i in tower.deepstack_indexes:
            deepstack.append(tower.deepstack_merger_list[tower.deepstack_indexes.index(i)](x))
    return [tower.merger(x), *deepstack]


def _compute(arch, tower, pixels, grid):
    meta = tower.metadata(grid, pixels.device) if arch == "qwen2_5_vl" else tower.metadata(grid)
    return tower.compute(pixels, meta)


@pytest.mark.parametrize("arch", ARCHS)
def test_strided_backend_gets_views_and_packed_backend_gets_packed(arch):
    tower = tiny_tower(arch, vit_backends.create("sdpa"))
    rows = GRIDS["three_clipped_windows"]
    strided, packed = Recording(needs_contiguous=False), Recording(needs_contiguous=True)
    _set_backend(tower, strided)
    got_strided = _flat(_run(arch, tower, rows))
    _set_backend(tower, packed)
    got_packed = _flat(_run(arch, tower, rows))
    assert strided.packed and not any(strided.packed)  # every call: views of the qkv output, nothing copied
    assert packed.packed and all(packed.packed)
    for a, b in zip(got_strided, got_packed):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_compute_equals_unfused_ops(arch, grid_name):
    tower = tiny_tower(arch, vit_backends.create("sdpa"))
    rows = GRIDS[grid_name]
    pixels, grid = pixels_for(arch, rows, 1, torch.float32, "cpu"), torch.tensor(rows)
    got, want = _compute(arch, tower, pixels, grid), unfused_forward(arch, tower, pixels, grid)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ---- CUDA ------------------------------------------------------------------------------------------------------

def _cuda_backend(name: str):
    if name not in vit_backends.usable():
        pytest.skip(f"{name} not usable here")
    return vit_backends.create(name)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "fa3", "flashinfer_cudnn"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_fused_tower_matches_unfused_ops(arch, backend):
    """bf16 on CUDA: Triton rotary_qkv on strided views (or packed for cuDNN), the fused add+norm kernels and the
    cuBLASLt GELU epilogue against the old op sequence on the same weights and backend."""
    tower = tiny_tower(arch, _cuda_backend(backend), torch.bfloat16, "cuda")
    for name in ("three_clipped_windows", "two_frames"):
        rows = GRIDS[name]
        pixels, grid = pixels_for(arch, rows, 2, torch.bfloat16, "cuda"), torch.tensor(rows, device="cuda")
        with torch.inference_mode():
            got, want = _compute(arch, tower, pixels, grid), unfused_forward(arch, tower, pixels, grid)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_fp32_tower_matches_cpu(arch):
    """fp32: the CUDA kernels (Triton rotary_qkv, add+norm, GELU epilogue) against the CPU reference path."""
    cpu = tiny_tower(arch, vit_backends.create("sdpa"))
    gpu = tiny_tower(arch, vit_backends.create("sdpa"), torch.float32, "cuda")
    rows = GRIDS["two_non_square"]
    with torch.inference_mode():
        want = _flat(_run(arch, cpu, rows))
        got = _flat(_run(arch, gpu, rows, device="cuda"))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)
