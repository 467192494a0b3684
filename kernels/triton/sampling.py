"""Triton bodies of seeded Gumbel-max sampling.

noise(seed, position, token) = -log(-log(u)), u = (murmur3_32(seed; position, token) + 0.5) / 2^32, computed in
uint32 / float64 exactly as kernels.reference.gumbel_noise so CPU and GPU pick the same tokens.
Stage 1, grid (B, n_split): each program scans one chunk of the vocabulary in BLOCK_V blocks and keeps the first
maximum of logits + noise. Stage 2, grid (B,): the first maximum over the chunks (ties go to the lower token id,
as torch.argmax does).
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _rotl32(x, r: tl.constexpr):
    return (x << r) | (x >> (32 - r))


@triton.jit
def _mix32(h, word):
    # one MurmurHash3 x86_32 body round; h, word: uint32
    k = _rotl32(word * 0xCC9E2D51, 15) * 0x1B873593
    h = _rotl32(h ^ k, 13)
    return h * 5 + 0xE6546B64


@triton.jit
def _fmix32(h):
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _gumbel_noise(h, LIBDEVICE: tl.constexpr):
    # h: uint32 hash -> float32 Gumbel noise, computed in float64 like the reference
    u = (h.to(tl.float64) + 0.5) / 4294967296.0
    if LIBDEVICE:  # CUDA: __nv_log, the log(double) torch's CUDA reference uses
        g = -libdevice.log(-libdevice.log(u))
    else:  # the CPU interpreter has no libdevice; numpy's log there
        g = -tl.log(-tl.log(u))
    return g.to(tl.float32)


@triton.jit
def gumbel_partial_kernel(logits_ptr, seed_ptr, pos_ptr, part_val_ptr, part_idx_ptr, V, stride_l, n_split,
                          BLOCK_V: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, LIBDEVICE: tl.constexpr):
    # constexpr trip count: few variants (powers of two), and the CPU interpreter cannot loop to a runtime bound
    row = tl.program_id(0)
    split = tl.program_id(1)
    seed = tl.load(seed_ptr + row).to(tl.uint32)  # int64 -> low 32 bits, as `seed & 0xFFFFFFFF`
    h_pos = _mix32(seed, tl.load(pos_ptr + row).to(tl.uint32))
    row_ptr = logits_ptr + row.to(tl.int64) * stride_l
    best_val = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.zeros([], tl.int32)
    for b in range(BLOCKS_PER_SPLIT):  # the vocabulary tail is masked
        start = (split * BLOCKS_PER_SPLIT + b) * BLOCK_V
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        logit = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
        h = _fmix32(_mix32(h_pos, cols.to(tl.uint32)) ^ 8)  # 8 = length in bytes of the two words
        val = tl.where(mask, logit + _gumbel_noise(h, LIBDEVICE), float("-inf"))
        block_max = tl.max(val, axis=0)
        take = block_max > best_val
        best_idx = tl.where(take, start + tl.argmax(val, axis=0), best_idx)
        best_val = tl.where(take, block_max, best_val)
    tl.store(part_val_ptr + row * n_split + split, best_val)
    tl.store(part_idx_ptr + row * n_split + split, best_idx)


@triton.jit
def gumbel_reduce_kernel(part_val_ptr, part_idx_ptr, out_ptr, n_split, BLOCK_S: tl.constexpr):
    row = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    mask = s < n_split
    vals = tl.load(part_val_ptr + row * n_split + s, mask=mask, other=float("-inf"))
    idx = tl.load(part_idx_ptr + row * n_split + s, mask=mask, other=0)
    first = tl.argmax(vals, axis=0)  # ties -> the lowest chunk, which holds the lowest token id
    tl.store(out_ptr + row, tl.sum(tl.where(s == first, idx, 0), axis=0).to(tl.int64))
