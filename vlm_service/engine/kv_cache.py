"""BlockManager: the paged KV pool as pure bookkeeping (no torch), with a prefix cache over full blocks.

A block holds `block_size` consecutive tokens of one sequence. Full blocks whose KV is computed get a chain hash
(hash of the previous block's hash and this block's content, see Sequence.block_content) so a later sequence with the
same prefix (same text, same image bytes) reuses them. Blocks with no user are free; free blocks that still hold a
hash stay findable until they are handed out again (least recently freed first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from vlm_service.engine.sequence import Sequence


def chain_hash(prev: bytes | None, content: tuple) -> bytes:
    """128-bit hash of (previous block hash, block content)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(prev or b"root")
    h.update(repr(content).encode())
    return h.digest()


class BlockManager:
    """Fixed pool of `num_blocks` blocks with reference counts and a hash -> block prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True):
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.hash_to_block: dict[bytes, int] = {}
        self.free_ids: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # front = next out

    # ---- queries ---------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_ids)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Extra blocks `seq` needs to hold its computed tokens plus `num_new_tokens` more."""
        total = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(total - len(seq.block_table), 0)

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self.free_ids)

    # ---- prefix cache ----------------------------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """Claim cached blocks for the longest hashed prefix of a sequence with no blocks yet; returns the number
        of tokens covered (always leaves at least one token to compute, so the step produces logits)."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_cache:
            return 0
        prev = None
        for i in range((seq.num_tokens - 1) // self.block_size):
            h = chain_hash(prev, seq.block_content(i, self.block_size))
            block = self.hash_to_block.get(h)
            if block is None:
                break
            self._take(block)
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            prev = h
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register hashes for the blocks of `seq` that became full and computed since the last call."""
        if not self.enable_prefix_cache:
            return
        full = seq.num_computed_tokens // self.block_size
        for i in range(len(seq.block_hashes), full):
            prev = seq.block_hashes[-1] if seq.block_hashes else None
            h = chain_hash(prev, seq.block_content(i, self.block_size))
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.hash_to_block and self.block_hash[block] is None:
                self.hash_to_block[h] = block
                self.block_hash[block] = h

    # ---- allocation ------------------------------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Append enough fresh blocks to `seq` for `num_new_tokens` more tokens (caller checked can_allocate)."""
        need = self.blocks_needed(seq, num_new_tokens)
        assert need <= len(self.free_ids), "allocate without can_allocate"
        for _ in range(need):
            block, _ = self.free_ids.popitem(last=False)
            self._forget_hash(block)
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s blocks. Tail blocks go out first, so shared prefixes stay cached longest; blocks with no
        hash go to the front of the free list (reused before any cached block)."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0
            if self.ref_counts[block] == 0:
                self.free_ids[block] = None
                if self.block_hash[block] is None:
                    self.free_ids.move_to_end(block, last=False)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_ids[block]
        self.ref_counts[block] += 1

    def _forget_hash(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None:
            if self.hash_to_block.get(h) == block:
                del self.hash_to_block[h]
            self.block_hash[block] = None
