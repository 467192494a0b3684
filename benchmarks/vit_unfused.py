"""The vision towers' compute as it ran before issue 17's fusions, for the before/after rows of bench_vit_encode.py.

Same modules and weights, the old op sequence: q/k/v copied packed (three .contiguous()) then the in-place 2D
rotary, plain residual adds between separate norms, Qwen3-VL's tanh-GELU as its own kernel after fc1. Device
kernels only (capturable like the towers' own compute). tests/models/test_vision_fusions.py checks the fused
towers against an independent copy of this sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import apply_rotary_


def _attn(a, x, cos, sin, cu, longest):
    t = x.shape[0]
    q, k, v = (p.contiguous() for p in a.qkv(x).view(t, 3, a.heads, a.head_dim).unbind(1))
    apply_rotary_(q, k, cos, sin)
    return a.proj(a.backend(q, k, v, cu, longest).reshape(t, -1))


def _qwen3_mlp(m, x):
    return m.linear_fc2(F.gelu(m.linear_fc1(x), approximate="tanh"))


def qwen25_compute(tower, pixels: torch.Tensor, meta) -> list[torch.Tensor]:
    x = tower._by_unit(tower.patch_embed(pixels), meta.index)
    for i, b in enumerate(tower.blocks):
        cu, longest = (meta.cu_full, meta.max_full) if i in tower.fullatt else (meta.cu_window, meta.max_window)
        x = x + _attn(b.attn, b.norm1(x), meta.cos, meta.sin, cu, longest)
        x = x + b.mlp(b.norm2(x))
    return [tower.merger(x)[meta.inverse]]


def qwen3_compute(tower, pixels: torch.Tensor, meta) -> list[torch.Tensor]:
    x = tower.patch_embed(pixels.to(tower.pos_embed.weight.device))
    x = x + (tower.pos_embed(meta.pos_index).float() * meta.pos_weight[:, :, None]).sum(1).to(x.dtype)
    deepstack = []
    for i, b in enumerate(tower.blocks):
        x = x + _attn(b.attn, b.norm1(x), meta.cos, meta.sin, meta.cu_seqlens, meta.max_seqlen)
        x = x + _qwen3_mlp(b.mlp, b.norm2(x))
        if i in tower.deepstack_indexes:
            deepstack.append(tower.deepstack_merger_list[tower.deepstack_indexes.index(i)](x))
    return [tower.merger(x), *deepstack]
