"""Triton body of the fused-MoE "decode" path: one kernel reads each picked expert's weights once, end to end.

For a decode step (P = T*k <= moe_config.PAIRS_MAX_PAIRS pairs) the pairs path (moe_pairs.py) still makes two
launches and its down kernel has only T * H / block_n programs, each walking its k picks in turn: at T = 1 that
streams w2 from too few programs to fill HBM. Here program (i-block, pair) does the whole MLP of its slice:
  1. route its token (as moe_pairs._route_pick: softmax + top-k + renormalise of E logits) or read the given pick;
  2. gate/up rows [BLOCK_I, H] of its expert as a GEMV -> silu(gate) * up [BLOCK_I], rounded as the reference;
  3. its down-projection partial product w2[e, :, i-block] [H, BLOCK_I] . act -> [H], times the routing weight,
     added into the token's fp32 row of acc [T, H] with atomics (the sum over the I-blocks and the k picks).
So the experts' weights are read exactly once and the intermediate never leaves registers; P * cdiv(I, BLOCK_I)
programs (192-768 at T=1) keep every SM streaming. The launcher zeroes acc before and casts it after (for a bf16
model: memset + this kernel + one cast, against the sorted path's 5-6 launches).

Rounding: gate, up, silu and the product round to the input dtype as kernels.reference.fused_moe does; the down
projection of a pair is not rounded on its own (it is summed across programs in fp32), so bf16 results differ from
the reference by at most about one rounding of each pick's projection; fp32 only in the order of the fp32 adds.
The I-block index is grid axis 0 (the fastest-launched), so programs running together read neighbouring column
chunks of the same w2 rows.
"""

import triton
import triton.language as tl

from kernels.triton.moe_pairs import _load_k, _route_pick, _sigmoid, gate_up_gemv


@triton.jit
def moe_decode_kernel(x_ptr, w13_ptr, w2_ptr, acc_ptr, logits_ptr, ids_ptr, weights_ptr, I, E,
                      stride_x, stride_w13e, stride_w13n, stride_w2e, stride_w2n, stride_l, stride_acc,
                      H: tl.constexpr, TOP_K: tl.constexpr, ROUTE: tl.constexpr, RENORM: tl.constexpr,
                      EVEN_K: tl.constexpr, EVEN_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_I: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """acc[t, :] += weight_p * w2[e_p, :, ib] . (silu(x[t] . gate[e_p, ib]) * (x[t] . up[e_p, ib])), t = p // k.

    x [T, H]; w13 [E, 2I, H] (gate rows, then up rows); w2 [E, H, I]; acc [T, H] fp32, zeroed by the caller.
    ROUTE: the pick comes from logits [T, E]; else from ids [P] int32 / weights [P] fp32.
    Grid: (cdiv(I, BLOCK_I), P)."""
    pid_i = tl.program_id(0)
    pair = tl.program_id(1)
    token = (pair // TOP_K).to(tl.int64)
    if ROUTE:
        expert, weight = _route_pick(logits_ptr, token, pair % TOP_K, E, stride_l, TOP_K, RENORM, BLOCK_E)
    else:
        expert = tl.load(ids_ptr + pair)
        weight = tl.load(weights_ptr + pair)
    expert = expert.to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = offs_i < I
    rows = offs_i % I  # wrapped rows load real weights; their activation is zeroed below
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token * stride_x + offs_k
    g_ptrs = w13_ptr + expert * stride_w13e + rows[:, None].to(tl.int64) * stride_w13n + offs_k[None, :]
    u_ptrs = g_ptrs + I * stride_w13n
    gate, up = gate_up_gemv(a_ptrs, g_ptrs, u_ptrs, H, BLOCK_I, BLOCK_K, EVEN_K)
    dtype = x_ptr.dtype.element_ty
    g = gate.to(dtype).to(tl.float32)
    act = (g * _sigmoid(g)).to(dtype).to(tl.float32)
    act = (act * up.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)  # [BLOCK_I], as stored
    act = tl.where(i_ok, act, 0.0) * weight
    offs_h = tl.arange(0, BLOCK_H)
    d_ptrs = w2_ptr + expert * stride_w2e + offs_h[:, None].to(tl.int64) * stride_w2n + rows[None, :]
    out_ptrs = acc_ptr + token * stride_acc + offs_h
    for h0 in range(0, H, BLOCK_H):
        h_ok = offs_h < H - h0
        w = _load_k(d_ptrs, h_ok[:, None], EVEN_H).to(tl.float32)  # [BLOCK_H, BLOCK_I]
        part = tl.sum(w * act[None, :], axis=1)
        if EVEN_H:
            tl.atomic_add(out_ptrs, part, sem="relaxed")
        else:
            tl.atomic_add(out_ptrs, part, mask=h_ok, sem="relaxed")
        d_ptrs += BLOCK_H * stride_w2n
        out_ptrs += BLOCK_H
