"""BlockManager: allocation, ref counts and the prefix cache, with no model and no torch."""

from vlm_service.engine.kv_cache import BlockManager
from vlm_service.engine.sequence import ImageSpan, Sequence
from vlm_service.types import SamplingParams

BS = 4


def seq(ids, images=()):
    return Sequence("r", list(ids), SamplingParams(), 16, tuple(images))


def compute_all(bm, s):
    """Allocate and 'compute' every token of s, registering its full blocks."""
    bm.allocate(s, s.num_pending_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BS)
    a, b = seq(range(10)), seq(range(20, 33))
    assert bm.can_allocate(a, 10) and bm.blocks_needed(a, 10) == 3
    bm.allocate(a, 10)
    bm.allocate(b, 13)
    assert bm.num_used_blocks == 7 and not bm.can_allocate(seq(range(8)), 8)
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 8 and all(r == 0 for r in bm.ref_counts)


def test_prefix_hit_shares_blocks_and_leaves_one_token_to_compute():
    bm = BlockManager(16, BS)
    a = seq(range(12))
    compute_all(bm, a)
    b = seq(range(12))
    assert bm.match_prefix(b) == 8  # 3 full blocks, but the last token must be computed
    assert b.block_table == a.block_table[:2]
    assert bm.ref_counts[a.block_table[0]] == 2
    c = seq(list(range(6)) + [99] * 6)
    assert bm.match_prefix(c) == 4  # diverges inside block 1


def test_image_content_hash_is_part_of_the_key():
    bm = BlockManager(16, BS)
    ids = [5, 6] + [7] * 8 + [8, 9, 10]
    a = seq(ids, [ImageSpan("img-A", 2, 8)])
    compute_all(bm, a)
    same = seq(ids, [ImageSpan("img-A", 2, 8)])
    other = seq(ids, [ImageSpan("img-B", 2, 8)])
    assert bm.match_prefix(same) == 12
    assert bm.match_prefix(other) == 0  # same token ids, other image bytes


def test_freed_cached_blocks_stay_reusable_until_evicted():
    bm = BlockManager(4, BS)
    a = seq(range(9))
    compute_all(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    again = seq(range(9))
    assert bm.match_prefix(again) == 8
    bm.free(again)
    filler = seq(range(50, 66))  # needs all 4 blocks: evicts the cached ones
    bm.allocate(filler, 16)
    bm.free(filler)
    assert bm.match_prefix(seq(range(9))) == 0


def test_unhashed_blocks_are_reused_before_cached_ones():
    bm = BlockManager(4, BS)
    a = seq(range(8))
    compute_all(bm, a)  # 2 cached blocks
    bm.free(a)
    scratch = seq(range(100, 106))  # 2 blocks, partially filled, never hashed
    bm.allocate(scratch, 6)
    bm.free(scratch)
    b = seq(range(200, 208))
    bm.allocate(b, 8)  # should take the two unhashed blocks
    assert bm.match_prefix(seq(range(9))) == 8
