"""The Qwen3-VL vision tower: patch embed (Conv3d as a matmul), learned position table bilinearly resampled to each
grid, 2D rotary, LayerNorm/GELU-tanh blocks over packed images (ViTAttention), the merger and deepstack mergers.

Patches arrive in the processor's merge-block order: for each frame, blocks of merge x merge patches, row-major over
blocks, row-major inside a block. Every per-patch table below (positions, rotary) is built in that order.

forward = split(compute(pixels, metadata(grid_thw))): metadata does all host work (position-table taps, rotary,
cu_seqlens, split sizes) and depends on the grids alone; compute only launches device kernels, so vision_graphs.py
can capture it in a CUDA graph per grid signature and replay it with new pixels.

Per block on CUDA (the kernels compute launches): norm1 (+ the previous MLP's residual add), qkv matmul (bias in
its epilogue), rotary in place on the strided q/k views (kernels.rotary_qkv; no q/k/v copies unless the backend
needs packed inputs), attention, proj matmul, norm2 + residual add, fc1 matmul with bias + tanh-GELU in its cuBLASLt
epilogue, fc2 matmul. The residual stream is carried as (branch output, residual) so every add lands in a norm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear_act import linear_gelu_tanh
from kernels.rotary_qkv import rotary_qkv
from vlm_service.models.layers import LayerNorm


def merge_order_rows_cols(h: int, w: int, merge: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) [h*w] of each patch of one h x w frame, listed in merge-block order."""
    rows = torch.arange(h, device=device).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
    cols = torch.arange(w, device=device).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
    # [bh, m, bw, m] -> [bh, bw, m, m]
    return rows.permute(0, 2, 1, 3).reshape(-1), cols.permute(0, 2, 1, 3).reshape(-1)


def _axis_taps(index: torch.Tensor, size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners) taps [N, 2] into a `side`-long table and their weights, for `size` targets."""
    src = index.float() * (side - 1) / max(size - 1, 1)
    floor = src.floor()
    taps = floor.long()[:, None] + torch.arange(2, device=index.device)
    weights = (1 - (src[:, None] - taps.float()).abs()).clamp(min=0)
    return taps.clamp(max=side - 1), weights


def pos_interp(grid_thw: torch.Tensor, side: int, merge: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices [N, 4] into the flat side x side table and bilinear weights [N, 4], per patch of all images."""
    idx, wts = [], []
    for t, h, w in grid_thw.tolist():
        rows, cols = merge_order_rows_cols(h, w, merge, device)
        h_taps, h_w = _axis_taps(rows, h, side)
        w_taps, w_w = _axis_taps(cols, w, side)
        idx.append((h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4).repeat(t, 1))
        wts.append((h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4).repeat(t, 1))
    return torch.cat(idx), torch.cat(wts)


def rotary_cos_sin(grid_thw: torch.Tensor, merge: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, D/2] of the 2D vision rope: [h * inv_freq | w * inv_freq] per patch (inv_freq [D/4])."""
    freqs = []
    for t, h, w in grid_thw.tolist():
        rows, cols = merge_order_rows_cols(h, w, merge, inv_freq.device)
        f = torch.cat((rows[:, None].float() * inv_freq, cols[:, None].float() * inv_freq), dim=-1)
        freqs.append(f.repeat(t, 1))
    f = torch.cat(freqs)
    return f.cos(), f.sin()


def frame_cu_seqlens(grid_thw: torch.Tensor, device=None) -> tuple[torch.Tensor, int]:
    """int32 cu_seqlens with one segment per frame, and the longest segment."""
    lens = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    cu = F.pad(lens.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    return cu, int(lens.max())


class FrameMeta(NamedTuple):
    """What the tower needs besides the pixels; depends on grid_thw alone, so a CUDA graph can reuse it."""
    pos_index: torch.Tensor  # [N, 4] taps into the flat position table
    pos_weight: torch.Tensor  # [N, 4] their bilinear weights
    cos: torch.Tensor  # [N, D/2] rotary
    sin: torch.Tensor
    cu_seqlens: torch.Tensor  # int32 [frames + 1]
    max_seqlen: int
    sizes: list[int]  # merged tokens per image


class PatchEmbed(nn.Module):
    """Conv3d with stride == kernel, as one matmul: [N, C*tp*p*p] @ [C*tp*p*p, hidden]."""

    def __init__(self, vc: dict, hidden: int):
        super().__init__()
        shape = (hidden, vc.get("in_channels", 3), vc.get("temporal_patch_size", 2), vc["patch_size"],
                 vc["patch_size"])
        self.proj = nn.Module()
        self.proj.weight = nn.Parameter(torch.empty(shape))
        self.proj.bias = nn.Parameter(torch.empty(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(x.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int, backend):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend

    def forward(self, x, cu_seqlens, max_seqlen, cos, sin):
        T = x.shape[0]  # x: [T, dim]
        # q, k, v [T, H, D]: rotated in place as strided views of the projection output, no copies, unless the
        # backend reads packed inputs only (then one pass writes them packed)
        q, k, v = rotary_qkv(self.qkv(x), cos, sin, self.heads, contiguous=self.backend.needs_contiguous)
        return self.proj(self.backend(q, k, v, cu_seqlens, max_seqlen).reshape(T, -1))


class VisionMLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))); on CUDA the GELU runs in fc1's cuBLASLt epilogue (kernels.linear_gelu_tanh) unless
    `gelu_epilogue` is switched off (benchmarks/bench_vit_encode.py times both)."""

    gelu_epilogue = True

    def __init__(self, dim: int, inter: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(dim, inter)
        self.linear_fc2 = nn.Linear(inter, dim)

    def forward(self, x):
        fc1 = self.linear_fc1
        h = linear_gelu_tanh(x, fc1.weight, fc1.bias) if self.gelu_epilogue else F.gelu(fc1(x), approximate="tanh")
        return self.linear_fc2(h)


class VisionBlock(nn.Module):
    def __init__(self, vc: dict, backend):
        super().__init__()
        self.norm1 = LayerNorm(vc["hidden_size"])
        self.norm2 = LayerNorm(vc["hidden_size"])
        self.attn = VisionAttention(vc["hidden_size"], vc["num_heads"], backend)
        self.mlp = VisionMLP(vc["hidden_size"], vc["intermediate_size"])

    def forward(self, h, residual, cu_seqlens, max_seqlen, cos, sin):
        """The residual stream is h + residual (h None: residual alone); returns (mlp output, stream before it),
        whose add the next norm fuses (LayerNorm.add), as the text decoder layers do."""
        if h is None:
            x = self.norm1(residual)
        else:
            x, residual = self.norm1.add(h, residual)
        x, residual = self.norm2.add(self.attn(x, cu_seqlens, max_seqlen, cos, sin), residual)
        return self.mlp(x), residual


class PatchMerger(nn.Module):
    """merge x merge neighbours -> one token of out_hidden_size; `postshuffle` norms after the regroup (deepstack)."""

    def __init__(self, vc: dict, postshuffle: bool):
        super().__init__()
        self.width = vc["hidden_size"] * vc.get("spatial_merge_size", 2) ** 2
        self.postshuffle = postshuffle
        self.norm = LayerNorm(self.width if postshuffle else vc["hidden_size"])
        self.linear_fc1 = nn.Linear(self.width, self.width)
        self.linear_fc2 = nn.Linear(self.width, vc["out_hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.reshape(-1, self.width)) if self.postshuffle else self.norm(x).reshape(-1, self.width)
        return self._mlp(x)

    def add(self, h: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(h + residual), h + residual) with the add fused into the norm. h, residual: [N, hidden]; the
        add is elementwise, so the postshuffle norm may add the rows regrouped [N / merge^2, width]."""
        if self.postshuffle:
            x, summed = self.norm.add(h.reshape(-1, self.width), residual.reshape(-1, self.width))
        else:
            normed, summed = self.norm.add(h, residual)
            x = normed.reshape(-1, self.width)
        return self._mlp(x), summed.view(residual.shape)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class Qwen3VLVisionTower(nn.Module):
    """`model.visual`: packed images in, per image (embeds [tokens, out_hidden], deepstack list) out."""

    def __init__(self, vc: dict, backend):
        super().__init__()
        self.merge = int(vc.get("spatial_merge_size", 2))
        self.heads = int(vc["num_heads"])
        self.side = int(vc["num_position_embeddings"] ** 0.5)
        self.theta = float((vc.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        self.deepstack_indexes = list(vc.get("deepstack_visual_indexes") or [])
        self.patch_embed = PatchEmbed(vc, vc["hidden_size"])
        self.pos_embed = nn.Embedding(vc["num_position_embeddings"], vc["hidden_size"])
        self.blocks = nn.ModuleList(VisionBlock(vc, backend) for _ in range(vc["depth"]))
        self.merger = PatchMerger(vc, postshuffle=False)
        self.deepstack_merger_list = nn.ModuleList(PatchMerger(vc, True) for _ in self.deepstack_indexes)

    def build_caches(self, device: torch.device) -> None:
        """Rotary inverse frequencies [D/4] on the device (called once the weights are materialized)."""
        half = (self.pos_embed.weight.shape[1] // self.heads) // 2
        self.inv_freq = 1.0 / (self.theta ** (torch.arange(0, half, 2, dtype=torch.float, device=device) / half))

    def backends(self) -> tuple:
        """The distinct attention backends of the blocks (part of a CUDA graph's key: swapping one changes kernels)."""
        return tuple({id(b.attn.backend): b.attn.backend for b in self.blocks}.values())

    def metadata(self, grid_thw: torch.Tensor) -> FrameMeta:
        """Everything forward needs besides the pixels, from grid_thw alone (host work, syncs, small uploads)."""
        device, grid = self.pos_embed.weight.device, grid_thw.cpu()
        idx, wts = pos_interp(grid, self.side, self.merge, device)
        cos, sin = rotary_cos_sin(grid, self.merge, self.inv_freq)
        cu, max_len = frame_cu_seqlens(grid, device)
        return FrameMeta(idx, wts, cos, sin, cu, max_len, (grid.prod(-1) // self.merge ** 2).tolist())

    def compute(self, pixel_values: torch.Tensor, meta: FrameMeta) -> list[torch.Tensor]:
        """[embeds [tokens, out_hidden], *deepstack] over all images: device kernels only (CUDA-graph capturable
        once the attention backends have seen meta's cu_seqlens)."""
        x = self.patch_embed(pixel_values.to(self.pos_embed.weight.device))  # [N, hidden]
        x = x + (self.pos_embed(meta.pos_index).float() * meta.pos_weight[:, :, None]).sum(1).to(x.dtype)
        deepstack, h = [], None  # the residual stream is h + x; each add is fused into the norm that follows it
        for i, block in enumerate(self.blocks):
            h, x = block(h, x, meta.cu_seqlens, meta.max_seqlen, meta.cos, meta.sin)
            if i in self.deepstack_indexes:
                out, x = self.deepstack_merger_list[self.deepstack_indexes.index(i)].add(h, x)
                deepstack.append(out)
                h = None
        return [self.merger(x) if h is None else self.merger.add(h, x)[0], *deepstack]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        meta = self.metadata(grid_thw)
        return self.split(self.compute(pixel_values, meta), meta.sizes)

    @staticmethod
    def split(outputs: list[torch.Tensor], sizes: list[int]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """compute's [embeds, *deepstack] -> per image (embeds, deepstack list)."""
        per_image, *per_ds = (t.split(sizes) for t in outputs)
        return [(e, [d[i] for d in per_ds]) for i, e in enumerate(per_image)]
