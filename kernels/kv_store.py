"""Store new k/v into the paged KV cache [num_blocks, 2, block_size, Hk, D] (FlashInfer's NHD layout)."""

from __future__ import annotations

import torch

from kernels import reference


def store_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    reference.store_kv(k, v, kv_cache, slot_mapping)
