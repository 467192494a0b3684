"""The Qwen2.5-VL vision tower: patch embed, 2D rotary, window attention with a few full-attention blocks, merger.

Window attention works on "merged units" (spatial_merge x spatial_merge patches, the unit the merger later fuses into
one LLM token). Patches are permuted so that each window's units are contiguous; every block then attends within
segments of one packed sequence (windows, or whole frames in the full-attention blocks) through the ViTAttention
backend; the merger output is permuted back to the processor's order.

forward = compute(pixels, metadata(grid_thw)): metadata does all host work (window order, cu_seqlens, rotary tables)
and depends on the grids alone; compute only launches device kernels, so vision_graphs.py can capture it in a CUDA
graph per grid signature and replay it with new pixels.

Per block on CUDA: RMSNorm norm1 (+ the previous MLP's residual add, fused_add_rmsnorm), qkv matmul (bias in its
epilogue), rotary in place on the strided q/k views (kernels.rotary_qkv; no q/k/v copies unless the backend needs
packed inputs), attention, proj matmul, norm2 + residual add, gate|up matmul (bias in its epilogue),
silu_and_mul (one Triton pass), down matmul.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.rotary_qkv import rotary_qkv
from vit_backends.base import ViTAttention
from vlm_service.errors import ModelLoadError
from vlm_service.models.layers import GatedMLP, RMSNorm


def vision_rope_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(h, w) coordinates [N, 2] of every patch, in the processor's order: frame, merge-block row, merge-block col,
    then row and col inside the block."""
    out = []
    for t, h, w in grid_thw.tolist():
        hh = torch.arange(h).view(h // merge, 1, merge, 1).expand(-1, w // merge, -1, merge)
        ww = torch.arange(w).view(1, w // merge, 1, merge).expand(h // merge, -1, merge, -1)
        out.append(torch.stack([hh.reshape(-1), ww.reshape(-1)], dim=-1).repeat(t, 1))
    return torch.cat(out)


def window_partition(grid_thw: torch.Tensor, merge: int, units_per_window: int) -> tuple[torch.Tensor, list[int]]:
    """Order merged units so that each attention window is contiguous.

    Windows are units_per_window x units_per_window merged units per frame, tiled from the top-left and clipped at
    the right/bottom edge, visited row-major; units inside a window are row-major too. Returns window_index
    [N / merge^2] (merged-unit ids over all images, in window order) and the window lengths in merged units. Every
    window is non-empty, so there are no zero-length segments to drop.
    """
    index, lengths, base, ws = [], [], 0, units_per_window
    for t, h, w in grid_thw.tolist():
        lh, lw = h // merge, w // merge
        f, r, c = torch.meshgrid(torch.arange(t), torch.arange(lh), torch.arange(lw), indexing="ij")
        nwh, nww = -(-lh // ws), -(-lw // ws)
        window = (f * nwh + r // ws) * nww + c // ws  # [t, lh, lw] window id within this image
        key = window * ws * ws + (r % ws) * ws + (c % ws)  # unique; sorts by window, then row-major inside
        index.append(torch.argsort(key.reshape(-1)) + base)
        lengths += torch.bincount(window.reshape(-1)).tolist()
        base += t * lh * lw
    return torch.cat(index), lengths


def cu_seqlens_of(lengths: list[int], device) -> tuple[torch.Tensor, int]:
    """int32 [S+1] cumulative lengths and the longest segment."""
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
    return cu.to(device), max(lengths)


class WindowMeta(NamedTuple):
    """What the tower needs besides the pixels; depends on grid_thw alone, so a CUDA graph can reuse it."""
    index: torch.Tensor  # [N / merge^2] merged-unit ids in window order
    inverse: torch.Tensor  # argsort(index): window order -> input order
    cos: torch.Tensor  # [N, D/2] rotary, window order
    sin: torch.Tensor
    cu_window: torch.Tensor  # int32 [windows + 1]
    max_window: int
    cu_full: torch.Tensor  # int32 [frames + 1]
    max_full: int
    sizes: list[int]  # merged tokens per image


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int, backend: ViTAttention):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.backend = backend

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen):
        n = x.shape[0]
        # [N, 3*dim] -> q, k, v [N, H, D]: rotated in place as strided views of the projection output (no copies),
        # or written packed in the same pass for a backend that reads packed inputs only
        q, k, v = rotary_qkv(self.qkv(x), cos, sin, self.heads, contiguous=self.backend.needs_contiguous)
        return self.proj(self.backend(q, k, v, cu_seqlens, max_seqlen).reshape(n, -1))


class VisionMLP(GatedMLP):
    """The gated MLP with biases, whose intermediate width can be padded."""

    def __init__(self, dim: int, inter: int):
        super().__init__(dim, inter, bias=True)

    @torch.no_grad()
    def pad_intermediate_(self, multiple: int = 64) -> None:
        """Zero-pad the intermediate width to a multiple of `multiple` (idempotent; pads are re-zeroed).

        Qwen2.5-VL's 3420 is not a multiple of 8, so cuBLAS falls back to an sm80, 2-element-aligned kernel for
        these matmuls (the H200 profile: 247 us per down projection at 1024², a third of the tower's GPU time).
        Padded gate and up rows are zero, silu(0) * 0 = 0, and the padded down columns are zero: same result."""
        gu, down = self.gate_up_proj, self.down_proj
        inter = gu.parts["gate_proj"]
        wide = -(-inter // multiple) * multiple
        if wide != inter and down.in_features == inter:
            def widen_rows(t: torch.Tensor) -> torch.Tensor:
                out = t.new_zeros((2 * wide,) + tuple(t.shape[1:]))
                out[:inter], out[wide:wide + inter] = t[:inter], t[inter:]
                return out

            gu.weight = nn.Parameter(widen_rows(gu.weight), requires_grad=False)
            gu.bias = nn.Parameter(widen_rows(gu.bias), requires_grad=False)
            gu.parts = {"gate_proj": inter, "_pad_gate": wide - inter, "up_proj": inter, "_pad_up": wide - inter}
            gu.sizes = list(gu.parts.values())
            w = down.weight.new_zeros(down.out_features, wide)
            w[:, :inter] = down.weight
            down.weight, down.in_features = nn.Parameter(w, requires_grad=False), wide
        for t in (gu.weight, gu.bias):
            t[inter:wide].zero_()
            t[wide + inter:].zero_()
        down.weight[:, inter:].zero_()


class VisionBlock(nn.Module):
    def __init__(self, vc: dict, backend: ViTAttention):
        super().__init__()
        dim = vc["hidden_size"]
        self.norm1, self.norm2 = RMSNorm(dim, 1e-6), RMSNorm(dim, 1e-6)
        self.attn = VisionAttention(dim, vc["num_heads"], backend)
        self.mlp = VisionMLP(dim, vc["intermediate_size"])

    def forward(self, h, residual, cos, sin, cu_seqlens, max_seqlen):
        """The residual stream is h + residual (h None: residual alone); returns (mlp output, stream before it),
        whose add the next RMSNorm fuses (fused_add_rmsnorm), as the text decoder layers do."""
        if h is None:
            x = self.norm1(residual)
        else:
            x, residual = self.norm1.add(h, residual)
        x, residual = self.norm2.add(self.attn(x, cos, sin, cu_seqlens, max_seqlen), residual)
        return self.mlp(x), residual


class PatchMerger(nn.Module):
    """RMSNorm, then merge^2 neighbouring patches -> one token through Linear, GELU (erf), Linear."""

    def __init__(self, dim: int, out_dim: int, merge: int):
        super().__init__()
        self.ln_q = RMSNorm(dim, 1e-6)
        wide = dim * merge * merge
        self.mlp = nn.Sequential(nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, dim] -> [N / merge^2, merge^2 * dim] -> [N / merge^2, out_dim]
        return self.mlp(self.ln_q(x).view(-1, self.mlp[0].in_features))

    def add(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """forward(h + residual) with the add fused into ln_q."""
        return self.mlp(self.ln_q.add(h, residual)[0].view(-1, self.mlp[0].in_features))


class PatchEmbed(nn.Module):
    """Conv3d with stride == kernel, i.e. a matmul over flattened patches [N, C*tp*p*p]."""

    def __init__(self, dim: int, kernel: tuple[int, ...]):
        super().__init__()
        self.proj = nn.Module()
        self.proj.weight = nn.Parameter(torch.empty(dim, *kernel))  # [dim, C, tp, p, p], the checkpoint's shape

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(pixels.to(w.dtype), w.reshape(w.shape[0], -1))


class Qwen2_5_VLVisionTower(nn.Module):
    """pixel_values [N, C*tp*p*p] + grid_thw [n, 3] -> merged embeddings [N / merge^2, out_hidden], input order."""

    def __init__(self, vc: dict, backend: ViTAttention):
        super().__init__()
        if vc.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"vision_config.hidden_act {vc['hidden_act']!r} is not supported (only 'silu')")
        chans, tp, p = vc.get("in_channels", vc.get("in_chans", 3)), vc["temporal_patch_size"], vc["patch_size"]
        self.merge = vc["spatial_merge_size"]
        self.units_per_window = max(1, vc["window_size"] // self.merge // p)
        self.fullatt = set(vc.get("fullatt_block_indexes") or ())
        self.rope_dim = vc["hidden_size"] // vc["num_heads"] // 2  # h and w each rotate with rope_dim/2 freqs
        self.rope_theta = float((vc.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        self.patch_embed = PatchEmbed(vc["hidden_size"], (chans, tp, p, p))
        self.blocks = nn.ModuleList(VisionBlock(vc, backend) for _ in range(vc["depth"]))
        self.merger = PatchMerger(vc["hidden_size"], vc["out_hidden_size"], self.merge)

    def backends(self) -> tuple[ViTAttention, ...]:
        """The distinct attention backends of the blocks (part of a CUDA graph's key: swapping one changes kernels)."""
        return tuple({id(b.attn.backend): b.attn.backend for b in self.blocks}.values())

    def _rope(self, grid_thw: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.rope_dim
        inv_freq = 1.0 / self.rope_theta ** (torch.arange(0, half, 2, device=device).float() / half)
        pos = vision_rope_positions(grid_thw, self.merge).to(device).float()  # [N, 2]
        freqs = (pos[:, :, None] * inv_freq).flatten(1)  # [N, D/2] = [h freqs | w freqs]
        return freqs.cos(), freqs.sin()

    def _by_unit(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # rows of x [N, ...] taken merge^2 at a time, reordered by unit index
        return x.view(-1, self.merge ** 2, *x.shape[1:])[index].view(x.shape)

    def metadata(self, grid_thw: torch.Tensor, device) -> WindowMeta:
        """Everything forward needs besides the pixels, from grid_thw alone (host work, syncs, small uploads)."""
        grid = grid_thw.cpu()
        rows = grid.tolist()
        index, win_units = window_partition(grid, self.merge, self.units_per_window)
        index = index.to(device)
        cu_win, max_win = cu_seqlens_of([n * self.merge ** 2 for n in win_units], device)
        cu_full, max_full = cu_seqlens_of([h * w for t, h, w in rows for _ in range(t)], device)
        cos, sin = (self._by_unit(c, index) for c in self._rope(grid, device))
        sizes = [t * h * w // self.merge ** 2 for t, h, w in rows]
        return WindowMeta(index, torch.argsort(index), cos, sin, cu_win, max_win, cu_full, max_full, sizes)

    def compute(self, pixels: torch.Tensor, meta: WindowMeta) -> list[torch.Tensor]:
        """[merged embeddings [N / merge^2, out_hidden] in input order]: device kernels only (CUDA-graph capturable
        once the attention backends have seen meta's cu_seqlens)."""
        x = self._by_unit(self.patch_embed(pixels), meta.index)  # [N, dim] in window order
        h = None  # the residual stream is h + x; each add is fused into the norm that follows it
        for i, block in enumerate(self.blocks):
            cu, longest = (meta.cu_full, meta.max_full) if i in self.fullatt else (meta.cu_window, meta.max_window)
            h, x = block(h, x, meta.cos, meta.sin, cu, longest)
        return [(self.merger(x) if h is None else self.merger.add(h, x))[meta.inverse]]

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.compute(pixels, self.metadata(grid_thw, pixels.device))[0]
