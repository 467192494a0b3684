"""A step's flat inputs as one message: a header of host lists and at most two tensors.

ints [5T + n + N] int64 = ids [T] | positions [3, T] | slot_mapping [T] | sample_idx [n] | image-pad index [N];
embeds [1 + k, N, hidden] = the image embeddings and their k deepstack features (only when the step has images).
"""

from __future__ import annotations

import torch

from vlm_service.engine.attention import BatchLayout
from vlm_service.models.common import MultimodalEmbeds


def pack_step(ids, positions, layout: BatchLayout, sample_idx, mm: MultimodalEmbeds | None, graphed: bool):
    """(meta, tensors) of a step, built on the inputs' device (no host sync)."""
    meta = {"T": int(ids.shape[0]), "n": int(sample_idx.shape[0]), "query_lens": layout.query_lens,
            "context_lens": layout.context_lens, "block_tables": layout.block_tables, "graphed": graphed, "N": 0}
    device = ids.device
    parts = [ids, positions.reshape(-1), layout.slot_mapping.to(device), sample_idx.to(device)]
    tensors: tuple[torch.Tensor, ...] = ()
    if mm is not None:
        index = mm.index if mm.index is not None else mm.mask.nonzero()[:, 0]
        meta["N"] = int(index.shape[0])
        parts.append(index.to(device))
        tensors = (torch.stack([mm.embeds, *(mm.deepstack or [])]),)
    return meta, (torch.cat([p.to(torch.long) for p in parts]),) + tensors


def unpack_step(meta: dict, tensors: list[torch.Tensor]):
    """The inverse of pack_step: (ids, positions, layout, sample_idx, mm, graphed) on the tensors' device."""
    T, n, N = meta["T"], meta["n"], meta["N"]
    ints = tensors[0]
    ids, positions = ints[:T], ints[T:4 * T].reshape(3, T)
    slots, sample_idx = ints[4 * T:5 * T], ints[5 * T:5 * T + n]
    layout = BatchLayout(meta["query_lens"], meta["context_lens"], meta["block_tables"], slots)
    mm = None
    if N:
        index = ints[5 * T + n:]
        mask = torch.zeros(T, dtype=torch.bool, device=ints.device)
        mask[index] = True
        stacked = tensors[1]
        mm = MultimodalEmbeds(stacked[0], mask, list(stacked[1:]) or None, index)
    return ids, positions, layout, sample_idx, mm, meta["graphed"]
