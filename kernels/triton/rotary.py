"""Triton body of the fused rotary kernel: neox rotate-half, in place on q [T, Hq, D] and k [T, Hk, D] in one launch.

Grid: (cdiv(T, BLOCK_T), HEAD_SPLIT). A program takes a block of BLOCK_T tokens, loads their 3 positions once, builds
cos/sin [BLOCK_T, D/2] once (fp32, in registers), then walks its share of the q heads and then of the k heads,
BLOCK_H heads per step: load the halves x1/x2 [BLOCK_T, BLOCK_H, D/2] (contiguous along D/2, so 16-byte vector
loads), rotate in fp32, store in the input dtype. The walk is software-pipelined by hand: the next step's halves
are loaded before the current step's are stored, so a load never waits behind a store. With HEAD_SPLIT=1 one
program covers every head of its tokens; HEAD_SPLIT>1 gives each program a contiguous slice of the heads (more
programs for short sequences, at the price of rebuilding cos/sin once per slice).

cos/sin come either straight from [T, D/2] tensors (2D vision rope) or, for MRoPE, from positions [3, T] and a
cos_sin_cache [max_pos, D] = [cos | sin]: frequency i uses the position of axis(i) (t, h or w). AXIS_TABLE picks how
axis(i) is found: read from an int32 [D/2] table (kernels.reference.mrope_axis_map, built once by the launcher), so
the contiguous and interleaved layouts compile to the very same code; or computed arithmetically, contiguous
(Qwen2.5-VL) from the section boundaries and interleaved (Qwen3-VL) from i % 3 and i < 3 * section. The arithmetic
form lets the compiler see that the contiguous axis is constant over runs of 8 frequencies and vectorize its cos/sin
gather (16-byte loads), which it cannot for the interleaved one nor for a table (4-byte loads), so the two layouts
get different code; it is kept for comparison (seen in sm_90 SASS from Triton 3.6).
"""

import triton
import triton.language as tl


@triton.jit
def _mrope_axis(freqs, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    # freqs: [BLOCK_F] -> axis 0/1/2 per frequency
    if INTERLEAVED:
        m3 = freqs % 3
        axis = tl.where((m3 == 1) & (freqs < 3 * S1), 1, tl.where((m3 == 2) & (freqs < 3 * S2), 2, 0))
    else:
        axis = (freqs >= S0).to(tl.int32) + (freqs >= S0 + S1).to(tl.int32)
    return axis


@triton.jit
def _mrope_cos_sin(pos_ptr, stride_pa, stride_pt, cache_ptr, stride_cache, axis_ptr, toks, tmask, freqs, fmask,
                   HALF: tl.constexpr, AXIS_TABLE: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr,
                   S2: tl.constexpr, INTERLEAVED: tl.constexpr):
    # the three position rows [BLOCK_T], then the per-frequency pick -> pos [BLOCK_T, BLOCK_F] -> cos, sin (fp32)
    p_t = tl.load(pos_ptr + toks * stride_pt, mask=tmask, other=0)
    p_h = tl.load(pos_ptr + stride_pa + toks * stride_pt, mask=tmask, other=0)
    p_w = tl.load(pos_ptr + 2 * stride_pa + toks * stride_pt, mask=tmask, other=0)
    if AXIS_TABLE:
        axis = tl.load(axis_ptr + freqs, mask=fmask, other=0)[None, :]
    else:
        axis = _mrope_axis(freqs, S0, S1, S2, INTERLEAVED)[None, :]
    pos = tl.where(axis == 0, p_t[:, None], tl.where(axis == 1, p_h[:, None], p_w[:, None])).to(tl.int64)
    m = tmask[:, None] & fmask[None, :]
    row = cache_ptr + pos * stride_cache + freqs[None, :]
    cos = tl.load(row, mask=m, other=1.0).to(tl.float32)
    sin = tl.load(row + HALF, mask=m, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _halves_ptr(x_ptr, stride_t, stride_h, h0, h_end, n_heads, toks, tmask, freqs, fmask, BLOCK_H: tl.constexpr):
    # heads [h0, h0 + BLOCK_H) clipped to h_end and n_heads -> x1 pointers and mask [BLOCK_T, BLOCK_H, BLOCK_F]
    heads = h0 + tl.arange(0, BLOCK_H)
    hmask = (heads < h_end) & (heads < n_heads)
    m = tmask[:, None, None] & hmask[None, :, None] & fmask[None, None, :]
    p = x_ptr + toks[:, None, None] * stride_t + heads[None, :, None] * stride_h + freqs[None, None, :]
    return p, m


@triton.jit
def _rotate_heads(x_ptr, stride_t, stride_h, h_begin, h_count, n_heads, toks, tmask, freqs, fmask, cos, sin,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, STEPS: tl.constexpr):
    # rotate heads [h_begin, min(h_begin + h_count, n_heads)) of x in STEPS steps of BLOCK_H heads. Software
    # pipelined: step i+1's halves are loaded before step i's are stored; only the halves cross iterations
    # (pointers and masks are recomputed, which is cheaper in registers than carrying them).
    h_end = h_begin + h_count
    c = cos[:, None, :]  # [BLOCK_T, 1, BLOCK_F] fp32
    s = sin[:, None, :]
    p, m = _halves_ptr(x_ptr, stride_t, stride_h, h_begin, h_end, n_heads, toks, tmask, freqs, fmask, BLOCK_H)
    x1 = tl.load(p, mask=m, other=0.0)
    x2 = tl.load(p + HALF, mask=m, other=0.0)
    for i in range(0, STEPS):  # constexpr trip count (the interpreter cannot loop over runtime scalars)
        p_n, m_n = _halves_ptr(x_ptr, stride_t, stride_h, h_begin + (i + 1) * BLOCK_H, h_end, n_heads, toks, tmask,
                               freqs, fmask, BLOCK_H)
        x1_n = tl.load(p_n, mask=m_n, other=0.0)  # all masked off on the last step: no memory traffic
        x2_n = tl.load(p_n + HALF, mask=m_n, other=0.0)
        p, m = _halves_ptr(x_ptr, stride_t, stride_h, h_begin + i * BLOCK_H, h_end, n_heads, toks, tmask, freqs,
                           fmask, BLOCK_H)
        a = x1.to(tl.float32)
        b = x2.to(tl.float32)
        tl.store(p, (a * c - b * s).to(x_ptr.dtype.element_ty), mask=m)
        tl.store(p + HALF, (b * c + a * s).to(x_ptr.dtype.element_ty), mask=m)
        x1, x2 = x1_n, x2_n


@triton.jit
def rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, axis_ptr, T, Hq, Hk, hq_per, hk_per,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin, stride_pa, stride_pt,
                HALF: tl.constexpr, USE_POS: tl.constexpr, AXIS_TABLE: tl.constexpr, INTERLEAVED: tl.constexpr,
                S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr,
                Q_STEPS: tl.constexpr, K_STEPS: tl.constexpr):
    # USE_POS: cos_ptr is the cos_sin_cache (row stride stride_cos) and pos_ptr the [3, T] positions; with
    # AXIS_TABLE, axis_ptr is the int32 [HALF] axis table and INTERLEAVED/S0..S2 are unused.
    # Program (i, j) rotates tokens [i*BLOCK_T, +BLOCK_T) of q heads [j*hq_per, +hq_per) and k heads [j*hk_per, ...);
    # Q_STEPS = cdiv(hq_per, BLOCK_H), K_STEPS likewise.
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = toks < T
    toks = toks.to(tl.int64)
    freqs = tl.arange(0, BLOCK_F)
    fmask = freqs < HALF
    if USE_POS:
        cos, sin = _mrope_cos_sin(pos_ptr, stride_pa, stride_pt, cos_ptr, stride_cos, axis_ptr, toks, tmask, freqs,
                                  fmask, HALF, AXIS_TABLE, S0, S1, S2, INTERLEAVED)
    else:
        m = tmask[:, None] & fmask[None, :]
        cos = tl.load(cos_ptr + toks[:, None] * stride_cos + freqs[None, :], mask=m, other=1.0).to(tl.float32)
        sin = tl.load(sin_ptr + toks[:, None] * stride_sin + freqs[None, :], mask=m, other=0.0).to(tl.float32)
    j = tl.program_id(1)
    q0 = j * hq_per
    if q0 < Hq:
        _rotate_heads(q_ptr, stride_qt, stride_qh, q0, hq_per, Hq, toks, tmask, freqs, fmask,
                      cos, sin, HALF, BLOCK_H, Q_STEPS)
    k0 = j * hk_per
    if k0 < Hk:
        _rotate_heads(k_ptr, stride_kt, stride_kh, k0, hk_per, Hk, toks, tmask, freqs, fmask,
                      cos, sin, HALF, BLOCK_H, K_STEPS)
