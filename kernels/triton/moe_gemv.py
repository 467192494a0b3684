"""Triton bodies of the fused-MoE "gemv" paths for few tokens (decode): more weight bytes in flight per SM.

The pairs path (moe_pairs.py) measured 42 % of HBM at T=1 on the H200: its gate_up walks H in a runtime loop
(one BLOCK_K step of loads in flight per program, ~8 dependent HBM round trips) and its down kernel walks the k
picks one after another, each through a runtime loop over I (~24 round trips of 1 KB per 1-warp program). A
decode GEMV is bound by bytes in flight (Little: 4.3 TB/s x ~1 us ~ 32 KB per SM), not by flops, so here
  1. moe_gemv_gate_up_kernel: program (p, n-block) as in the pairs path, but the K loop is unrolled at compile
     time (tl.static_range), so every load of the program can issue before the first FMA waits;
  2. moe_gemv_down_kernel: program (t, n-block) loads ONE tile [KP, BLOCK_N, BLOCK_K] gathering the rows of all k
     picks of token t at once (KP = k rounded up to a power of two, padding picks masked), then reduces over I
     and the picks in fp32 and writes out[t] (the k-sum fused, no [P, H] intermediate). It routes the token
     itself from the logits (all k picks in one pass), so it needs nothing from step 1 but the intermediate.
  PDL (programmatic dependent launch, sm_90+, path "gemv_pdl"): step 1 signals griddepcontrol.launch_dependents
  at its start and step 2 (launched with launch_pdl) routes and loads its w2 tile BEFORE griddepcontrol.wait, so
  the w2 stream overlaps step 1's tail and the launch gap; only the intermediate is read after the wait. Step 1 is
  launched normally, so the logits and x it reads (written before it) are visible to step 2's early part too.
Rounding as kernels.reference.fused_moe: each projection, the silu and the product in the input dtype, each
pick's down projection rounded to dtype, the weighted sum in fp32. Names as in kernels/triton/moe.py.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.triton.moe_pairs import _route_pick, _sigmoid


@triton.jit
def _route_token(logits_ptr, token, E, stride_l, TOP_K: tl.constexpr, RENORM: tl.constexpr,
                 BLOCK_E: tl.constexpr, KP: tl.constexpr):
    """(ids [KP] int32, weights [KP] fp32) of the token's softmax top-k, picks >= k zero: the same k argmax passes
    as moe_route_kernel (lowest index on ties), renormalised over the k."""
    cols = tl.arange(0, BLOCK_E)
    picks = tl.arange(0, KP)
    x = tl.load(logits_ptr + token * stride_l + cols, mask=cols < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    p = tl.where(cols < E, p, -1.0)
    ids = tl.zeros([KP], tl.int32)
    w = tl.zeros([KP], tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(p, axis=0)
        arg = tl.min(tl.where(p == best, cols, BLOCK_E), axis=0)
        ids = tl.where(picks == j, arg, ids)
        w = tl.where(picks == j, best, w)
        p = tl.where(cols == arg, -2.0, p)
    if RENORM:
        w = w / tl.sum(w, axis=0)
    return ids, w


@triton.jit
def moe_gemv_gate_up_kernel(x_ptr, w_ptr, out_ptr, logits_ptr, ids_ptr, N, E,
                            stride_x, stride_we, stride_wn, stride_l, stride_out, K: tl.constexpr,
                            TOP_K: tl.constexpr, ROUTE: tl.constexpr, RENORM: tl.constexpr,
                            BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            PDL: tl.constexpr, PDL_WAIT: tl.constexpr):
    """out[p, n] = silu(x[t] . gate[e, n]) * (x[t] . up[e, n]), t = p // k, e = pair p's expert.

    x [T, K=H]; w [E, 2N, K]; out [P, N=I]. ROUTE: e from logits [T, E], else from ids [P] int32.
    PDL_WAIT: launched as a programmatic dependent of the route kernel; it waits for that grid before reading
    anything, and only then lets its own dependent (down, which reads ids early) start.
    Grid: (P, cdiv(N, BLOCK_N))."""
    pair = tl.program_id(0)
    pid_n = tl.program_id(1)
    if PDL_WAIT:
        gdc_wait()
    if PDL:
        gdc_launch_dependents()  # the down kernel may start now: it waits for this grid before reading out
    token = (pair // TOP_K).to(tl.int64)
    if ROUTE:
        expert, _ = _route_pick(logits_ptr, token, pair % TOP_K, E, stride_l, TOP_K, RENORM, BLOCK_E)
    else:
        expert = tl.load(ids_ptr + pair)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N  # wrapped rows load real weights; not stored
    offs_k = tl.arange(0, BLOCK_K)
    g_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    gate = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):  # unrolled: all of the program's loads can be in flight at once
        k_ok = offs_k < K - k0
        a = tl.load(x_ptr + token * stride_x + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        gate += tl.load(g_ptrs + k0, mask=k_ok[None, :], other=0.0).to(tl.float32) * a
        up += tl.load(g_ptrs + N * stride_wn + k0, mask=k_ok[None, :], other=0.0).to(tl.float32) * a
    dtype = out_ptr.dtype.element_ty
    g = tl.sum(gate, axis=1).to(dtype).to(tl.float32)
    act = (g * _sigmoid(g)).to(dtype).to(tl.float32)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + pair.to(tl.int64) * stride_out + cols,
             (act * tl.sum(up, axis=1).to(dtype).to(tl.float32)).to(dtype), mask=cols < N)


@triton.jit
def moe_gemv_down_kernel(a_ptr, w_ptr, out_ptr, logits_ptr, ids_ptr, weights_ptr, N, E, stride_a, stride_we,
                         stride_wn, stride_l, stride_out, K: tl.constexpr, TOP_K: tl.constexpr,
                         ROUTE: tl.constexpr, RENORM: tl.constexpr, BLOCK_E: tl.constexpr, KP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """out[t, n] = sum over j < k of weight[p] * (a[p] . w[e_p, n]), p = t*k + j, in fp32.

    a [P, K=I] (the gate_up output); w [E, N=H, K]; out [T, N]. ROUTE: the picks from logits [T, E], else from
    ids [P] int32 / weights [P] fp32. PDL: everything but `a` is read before griddepcontrol.wait.
    Grid: (T, cdiv(N, BLOCK_N))."""
    token = tl.program_id(0).to(tl.int64)
    picks = tl.arange(0, KP)
    pick_ok = picks < TOP_K
    if ROUTE:
        ids, weight = _route_token(logits_ptr, token, E, stride_l, TOP_K, RENORM, BLOCK_E, KP)
    else:
        ids = tl.load(ids_ptr + token * TOP_K + picks, mask=pick_ok, other=0)
        weight = tl.load(weights_ptr + token * TOP_K + picks, mask=pick_ok, other=0.0)
    offs_n = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    # [KP, BLOCK_N, BLOCK_K]: row n of each pick's expert, K contiguous
    w_ptrs = (w_ptr + ids.to(tl.int64)[:, None, None] * stride_we + offs_n.to(tl.int64)[None, :, None] * stride_wn
              + offs_k[None, None, :])
    a_ptrs = a_ptr + (token * TOP_K + picks)[:, None].to(tl.int64) * stride_a + offs_k[None, :]  # [KP, BLOCK_K]
    acc = tl.zeros([KP, BLOCK_N], tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        w = tl.load(w_ptrs + k0, mask=pick_ok[:, None, None] & k_ok[None, None, :], other=0.0)
        if PDL:
            if k0 == 0:
                gdc_wait()  # the gate_up grid has finished and its stores are visible
        a = tl.load(a_ptrs + k0, mask=pick_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w.to(tl.float32) * a[:, None, :], axis=2)
    dtype = out_ptr.dtype.element_ty
    res = tl.sum(acc.to(dtype).to(tl.float32) * weight[:, None], axis=0)  # each pick rounded, as the reference
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + token * stride_out + cols, res.to(dtype), mask=cols < N)
