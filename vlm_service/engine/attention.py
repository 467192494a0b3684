"""AttentionContext implementations over the paged KV pool (one [num_blocks, 2, block_size, Hk, D] tensor per layer).

CPU: TorchPagedAttention, the reference (gathers each sequence's blocks, causal with the cached offset).
CUDA: FlashInferAttention over FlashInfer's paged prefill/decode wrappers (flashinfer imported lazily).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import kernels
from vlm_service.engine.transfer import to_device


@dataclass
class BatchLayout:
    """Per-sequence layout of one step's flat batch (host lists; tensors built where needed)."""

    query_lens: list[int]  # new tokens per sequence
    context_lens: list[int]  # cached + new tokens per sequence (what each attends to at its last token)
    block_tables: list[list[int]]
    slot_mapping: torch.Tensor  # [T] int64 flat slot (block * block_size + offset) of every new token


class TorchPagedAttention:
    """Reference paged attention: store the step's k/v, then per sequence attend over its gathered blocks."""

    def __init__(self, kv_caches: list[torch.Tensor], layout: BatchLayout, scale: float):
        self.kv_caches = kv_caches
        self.layout = layout
        self.scale = scale
        self._masks = [self._causal_mask(q, c, kv_caches[0].device)
                       for q, c in zip(layout.query_lens, layout.context_lens)]

    @staticmethod
    def _causal_mask(qlen: int, ctx: int, device) -> torch.Tensor:
        # query j sits at absolute position ctx - qlen + j and sees keys 0..that position: [qlen, ctx] bool
        q_pos = torch.arange(ctx - qlen, ctx, device=device)[:, None]
        return torch.arange(ctx, device=device)[None, :] <= q_pos

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [T, Hq, D], k/v [T, Hk, D] -> [T, Hq, D]
        kernels.store_kv(k, v, self.kv_caches[layer], self.layout.slot_mapping)
        return self.attend_stored(layer, q)

    def store_target(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv_caches[layer], self.layout.slot_mapping

    def attend_stored(self, layer: int, q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        cache = self.kv_caches[layer]
        out = torch.empty_like(q) if out is None else out
        start = 0
        for qlen, ctx, table, mask in zip(self.layout.query_lens, self.layout.context_lens,
                                          self.layout.block_tables, self._masks):
            out[start:start + qlen] = self._attend_one(q[start:start + qlen], cache, table, ctx, mask)
            start += qlen
        return out

    def _attend_one(self, q, cache, table, ctx, mask) -> torch.Tensor:
        blocks = cache[torch.tensor(table, device=cache.device)]  # [nb, 2, bs, Hk, D]
        kv = blocks.transpose(0, 1).flatten(1, 2)[:, :ctx].to(q.dtype)  # [2, ctx, Hk, D]
        group = q.shape[1] // kv.shape[2]
        key = kv[0].repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, ctx, D]
        val = kv[1].repeat_interleave(group, dim=1).transpose(0, 1)
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), key, val, attn_mask=mask,
                                                             scale=self.scale)
        return o.transpose(0, 1)  # [qlen, Hq, D]


def paged_kv_indices(layout: BatchLayout, block_size: int) -> tuple[list[int], list[int], list[int]]:
    """FlashInfer's page table in CSR form: (indptr [B+1], indices [sum pages], last_page_len [B])."""
    indptr, indices, last = [0], [], []
    for ctx, table in zip(layout.context_lens, layout.block_tables):
        pages = -(-ctx // block_size)
        indices.extend(table[:pages])
        indptr.append(len(indices))
        last.append(ctx - (pages - 1) * block_size)
    return indptr, indices, last


class FlashInferAttention:
    """CUDA paged attention: the runner plans `wrapper` once per step; every layer then runs it."""

    def __init__(self, kv_caches: list[torch.Tensor], slot_mapping: torch.Tensor, wrapper):
        self.kv_caches = kv_caches
        self.slot_mapping = slot_mapping
        self.wrapper = wrapper

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kernels.store_kv(k, v, self.kv_caches[layer], self.slot_mapping)
        return self.attend_stored(layer, q)

    def store_target(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv_caches[layer], self.slot_mapping

    def attend_stored(self, layer: int, q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.wrapper.run(q, self.kv_caches[layer], out=out)


def decode_uses_tensor_cores(spec) -> bool:
    """FlashInfer's CUDA-core decode kernels exist for GQA group sizes 1, 2, 4 and 8 only (Qwen2.5-VL-7B has 7);
    its tensor-core (prefill-kernel) decode takes any group size and is the faster one for large groups.
    VLM_DECODE_TENSOR_CORES=0|1 overrides the choice where both exist (an A/B knob for benchmarks/bench_decode.py)."""
    group = spec.num_heads // spec.num_kv_heads
    forced = os.environ.get("VLM_DECODE_TENSOR_CORES", "")
    if forced in ("0", "1") and group in (1, 2, 4, 8):
        return forced == "1"
    return group > 4


class FlashInferPlanner:
    """Owns the workspace and the prefill/decode wrappers; plans them from a BatchLayout (CUDA only)."""

    def __init__(self, device: torch.device, spec, dtype: torch.dtype, block_size: int):
        import flashinfer  # lazy: CPU imports never need it

        self.flashinfer = flashinfer
        self.device, self.spec, self.dtype, self.block_size = device, spec, dtype, block_size
        self.workspace = torch.zeros(128 << 20, dtype=torch.uint8, device=device)
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self.decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=decode_uses_tensor_cores(spec))

    @staticmethod
    def _int32(xs: list[int]) -> torch.Tensor:
        # host tensors: plan() reads them on the CPU and copies them into the wrapper's device buffers; pinned, so
        # those copies do not wait for the running step (engine/transfer.py)
        return torch.tensor(xs, dtype=torch.int32).pin_memory()

    def _pages(self, indices: list[int]) -> torch.Tensor:
        # the page list on the device: plan() only copies it, and FlashInfer 0.6's CUDA-graph decode plan copies a
        # host page list with non_blocking=False, a stream sync that would stall every overlapped decode step
        return to_device(indices, torch.int32, self.device)

    def plan(self, layout: BatchLayout, wrapper=None):
        """Plan the decode wrapper when every sequence has one new token, else the prefill wrapper."""
        indptr, indices, last = paged_kv_indices(layout, self.block_size)
        s = self.spec
        common = dict(q_data_type=self.dtype, kv_data_type=self.dtype, sm_scale=s.head_dim ** -0.5)
        if all(q == 1 for q in layout.query_lens):
            wrapper = wrapper or self.decode
            wrapper.plan(self._int32(indptr), self._pages(indices), self._int32(last), s.num_heads,
                         s.num_kv_heads, s.head_dim, self.block_size, **common)
            return wrapper
        qo = [0]
        for q in layout.query_lens:
            qo.append(qo[-1] + q)
        self.prefill.plan(self._int32(qo), self._int32(indptr), self._pages(indices), self._int32(last),
                          s.num_heads, s.num_kv_heads, s.head_dim, self.block_size, causal=True, **common)
        return self.prefill
