"""cuDNN SDPA through FlashInfer: `flashinfer.cudnn.cudnn_batch_prefill_with_kv_cache`, non-causal, ragged q/k/v.

Graph reuse (the padding trick). FlashInfer caches one cuDNN graph per (batch, max_seqlen_q, max_seqlen_kv, heads,
head_dim, dtype, scale); the total token count is not part of the key. A first build costs 0.05-1 s, so every call is
mapped onto a few graph shapes:
- batch is padded up to a power of two with EMPTY segments: cu_seqlens [0, a, a+b] becomes [0, a, a+b, a+b, a+b]
  (lengths a, b, 0, 0). The padding mask gives empty segments no work, and their offsets point at the end of the
  packed tensors, so nothing is read or written for them;
- max_seqlen is rounded up to a power of two (at least 64): it only sizes the grid; the padding mask stops each
  segment at its real length and tiles past it exit at once (vLLM pads the same way, to 1K..128K, citing cuDNN's
  measurement that padding costs no significant kernel time).
So Qwen2.5-VL's window layers (max 64) and full layers (one image) hit two graphs per size class.

Offsets. cuDNN reads ragged offsets per segment. FlashInfer also accepts token-unit indptrs, but with the cuDNN 9.19
of the GPU host (< 9.24) it converts them to element units with six small kernels on EVERY call. We compute the
padded element offsets (token offset * H * D) and lengths once per cu_seqlens tensor and reuse them across the ViT's
layers (the same cu_seqlens object is passed to every layer).

One 128 MiB workspace is shared by all instances on a device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vit_backends.base import PerTensorCache, ViTAttention, import_optional

MODULE = "flashinfer.cudnn"
WORKSPACE_BYTES = 128 << 20
_WORKSPACES: dict[torch.device, torch.Tensor] = {}


def workspace(device: torch.device) -> torch.Tensor:
    """The one cuDNN workspace of `device` (allocated on first use)."""
    buf = _WORKSPACES.get(device)
    if buf is None:
        buf = _WORKSPACES[device] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return buf


def bucket_batch(n: int) -> int:
    """Segments -> graph batch: the next power of two."""
    return 1 << max(n - 1, 0).bit_length()


def bucket_seqlen(n: int) -> int:
    """max_seqlen -> graph max_seqlen: the next power of two, at least 64."""
    return max(64, 1 << max(n - 1, 0).bit_length())


class RaggedPlan(NamedTuple):
    """What cuDNN needs for one cu_seqlens: padded batch, element offsets [B+1,1,1,1], lengths [B,1,1,1]."""
    batch: int
    offsets: torch.Tensor
    lengths: torch.Tensor


def make_plan(cu_seqlens: torch.Tensor, row_elems: int) -> RaggedPlan:
    """Pad cu_seqlens [S+1] with empty segments to a power-of-two batch; offsets in elements (row_elems = H*D)."""
    segments = cu_seqlens.numel() - 1
    batch = bucket_batch(segments)
    cu = cu_seqlens.to(torch.int32)
    padded = torch.cat([cu, cu[-1:].expand(batch - segments)])  # [B+1]
    lengths = (padded[1:] - padded[:-1]).view(-1, 1, 1, 1)  # [B,1,1,1]
    return RaggedPlan(batch, (padded * row_elems).view(-1, 1, 1, 1), lengths)


class FlashinferCudnnAttention(ViTAttention):
    """Non-causal ragged attention on cuDNN SDPA, graphs reused across shapes of one bucket."""

    name = "flashinfer_cudnn"
    # FlashInfer builds the cuDNN graph from q's strides but keys its graph cache by shape alone, and the ragged
    # offsets below assume a token stride of H*D: packed inputs only.
    needs_contiguous = True

    def __init__(self):
        import_optional(self.name, "cudnn")  # nvidia-cudnn-frontend; without it FlashInfer has no graph path
        self._prefill = import_optional(self.name, MODULE).cudnn_batch_prefill_with_kv_cache
        self._plans = PerTensorCache()
        self.graph_shapes: set[tuple] = set()  # (batch, max_seqlen, H, D, dtype): one cuDNN graph each

    def supports(self, device, dtype, head_dim):
        return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and \
            head_dim % 8 == 0 and head_dim <= 128

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        if q.dtype not in (torch.bfloat16, torch.float16) or q.device.type != "cuda":
            raise ValueError(f"the flashinfer_cudnn ViT attention backend runs bf16/fp16 on CUDA, got "
                             f"{str(q.dtype).removeprefix('torch.')} on {q.device}")
        # the graph key ignores strides: force the contiguous [T, H, D] layout every graph was built for
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        tokens, heads, dim = q.shape
        assert tokens * heads * dim < 2**31, "element offsets are int32"
        plan = self._plans.get(cu_seqlens, heads * dim, lambda: make_plan(cu_seqlens, heads * dim))
        seqlen = bucket_seqlen(int(max_seqlen))
        self.graph_shapes.add((plan.batch, seqlen, heads, dim, q.dtype))
        out, _ = self._prefill(
            q, k, v, dim ** -0.5, workspace(q.device), max_token_per_sequence=seqlen, max_sequence_kv=seqlen,
            actual_seq_lens_q=plan.lengths, actual_seq_lens_kv=plan.lengths, causal=False, return_lse=False,
            batch_offsets_q=plan.offsets, batch_offsets_o=plan.offsets, batch_offsets_k=plan.offsets,
            batch_offsets_v=plan.offsets)
        return out
