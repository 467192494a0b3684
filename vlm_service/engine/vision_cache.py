"""LRU cache of vision-tower outputs keyed by visual item (image or video) content hash, bounded by bytes."""

from __future__ import annotations

from collections import OrderedDict

import torch

VisionEmbeds = tuple[torch.Tensor, list[torch.Tensor]]  # (embeds [tokens, hidden], deepstack list of [tokens, hidden])


def _nbytes(item: VisionEmbeds) -> int:
    emb, deep = item
    return emb.numel() * emb.element_size() + sum(d.numel() * d.element_size() for d in deep)


class VisionCache:
    """get/put by content hash; the least recently used entries go first when over `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, VisionEmbeds] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> VisionEmbeds | None:
        item = self.entries.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return item

    def put(self, key: str, item: VisionEmbeds) -> None:
        size = _nbytes(item)
        if size > self.max_bytes or key in self.entries:
            return
        self.entries[key] = item
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= _nbytes(old)

    def __len__(self) -> int:
        return len(self.entries)
