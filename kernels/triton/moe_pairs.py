"""Triton bodies of the fused-MoE "pairs" path for few tokens (decode): no sorting, no padding, 2 launches.

With P = T*k small (a decode step: T=1..8, k=8) nearly every pair has an expert to itself, so the sorted layout
buys nothing and its launches (route, align, k-sum) cost more than the GEMMs' weight reads. Here
  1. moe_pairs_gate_up_kernel: program (p, n-block) routes token p // k itself (softmax + top-k of its E logits,
     a few hundred flops beside the >= 100 KB of weights it reads), takes pick p % k, and computes its
     silu(gate) * up slice as a GEMV (elementwise products reduced in fp32, no 16-row MMA padding);
     programs with n-block 0 store the pick's id and weight for step 2;
  2. moe_pairs_down_kernel: program (t, n-block) sums over the k picks of token t weight * (inter[p] . w2[e, n])
     in fp32 and writes out[t] directly (the k-sum fused, no [P, H] intermediate).
Rounding follows kernels.reference.fused_moe: each projection, the silu and the product in the input dtype, the
weighted sum in fp32. Names as in kernels/triton/moe.py.
"""

import triton
import triton.language as tl


@triton.jit
def _route_pick(logits_ptr, token, pick, E, stride_l, TOP_K: tl.constexpr, RENORM: tl.constexpr,
                BLOCK_E: tl.constexpr):
    """(expert id int32, weight fp32) of pick `pick` of the token's softmax top-k, as moe_route_kernel computes it
    (k argmax passes, lowest index on ties, renormalised over the k)."""
    cols = tl.arange(0, BLOCK_E)
    x = tl.load(logits_ptr + token * stride_l + cols, mask=cols < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    p = tl.where(cols < E, p, -1.0)
    expert = 0
    weight = 0.0
    total = 0.0
    for j in tl.static_range(TOP_K):
        best = tl.max(p, axis=0)
        arg = tl.min(tl.where(p == best, cols, BLOCK_E), axis=0)
        expert = tl.where(pick == j, arg, expert)
        weight = tl.where(pick == j, best, weight)
        total += best
        p = tl.where(cols == arg, -2.0, p)
    if RENORM:
        weight = weight / total
    return expert, weight


@triton.jit
def _load_k(ptrs, k_ok, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=k_ok, other=0.0)


@triton.jit
def _sigmoid(x):
    z = tl.exp(-tl.abs(x))  # overflow-free
    return tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


@triton.jit
def gate_up_gemv(a_ptrs, g_ptrs, u_ptrs, K, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """(x . gate rows, x . up rows), each [BLOCK_ROWS] fp32: a GEMV over K in BLOCK_K steps of one activation row
    (a_ptrs [BLOCK_K]) against two weight tiles (g_ptrs, u_ptrs [BLOCK_ROWS, BLOCK_K], K contiguous). Shared by the
    pairs and the decode kernels."""
    offs_k = tl.arange(0, BLOCK_K)
    gate = tl.zeros([BLOCK_ROWS, BLOCK_K], tl.float32)
    up = tl.zeros([BLOCK_ROWS, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = _load_k(a_ptrs, k_ok, EVEN_K).to(tl.float32)[None, :]
        gate += _load_k(g_ptrs, k_ok[None, :], EVEN_K).to(tl.float32) * a
        up += _load_k(u_ptrs, k_ok[None, :], EVEN_K).to(tl.float32) * a
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    return tl.sum(gate, axis=1), tl.sum(up, axis=1)


@triton.jit
def moe_pairs_gate_up_kernel(x_ptr, w_ptr, out_ptr, logits_ptr, ids_ptr, weights_ptr, N, E,
                             stride_x, stride_we, stride_wn, stride_l, stride_out, K: tl.constexpr,
                             TOP_K: tl.constexpr, ROUTE: tl.constexpr, RENORM: tl.constexpr,
                             EVEN_K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    """out[p, n] = silu(x[t] . gate[e, n]) * (x[t] . up[e, n]), t = p // k, e = pair p's expert.

    x [T, K=H]; w [E, 2N, K]; out [P, N=I]. ROUTE: e and the weight come from logits [T, E] (stored to ids [P]
    int32 / weights [P] fp32 by the n-block-0 programs); else e is read from ids. Grid: (P, cdiv(N, BLOCK_N))."""
    pair = tl.program_id(0)
    pid_n = tl.program_id(1)
    token = (pair // TOP_K).to(tl.int64)
    if ROUTE:
        expert, weight = _route_pick(logits_ptr, token, pair % TOP_K, E, stride_l, TOP_K, RENORM, BLOCK_E)
        if pid_n == 0:
            tl.store(ids_ptr + pair, expert.to(tl.int32))
            tl.store(weights_ptr + pair, weight)
    else:
        expert = tl.load(ids_ptr + pair)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N  # wrapped columns load real rows; not stored
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token * stride_x + offs_k
    g_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    u_ptrs = g_ptrs + N * stride_wn
    gate, up = gate_up_gemv(a_ptrs, g_ptrs, u_ptrs, K, BLOCK_N, BLOCK_K, EVEN_K)
    dtype = out_ptr.dtype.element_ty
    g = gate.to(dtype).to(tl.float32)
    act = (g * _sigmoid(g)).to(dtype).to(tl.float32)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + pair.to(tl.int64) * stride_out + cols,
             (act * up.to(dtype).to(tl.float32)).to(dtype), mask=cols < N)


@triton.jit
def moe_pairs_down_kernel(a_ptr, w_ptr, out_ptr, ids_ptr, weights_ptr, N, stride_a, stride_we, stride_wn,
                          stride_out, K: tl.constexpr, TOP_K: tl.constexpr, EVEN_K: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[t, n] = sum over j < k of weight[p] * (a[p] . w[e_p, n]), p = t*k + j, in fp32.

    a [P, K=I] (the pairs gate_up output); w [E, N=H, K]; ids [P] int32, weights [P] fp32; out [T, N].
    Grid: (T, cdiv(N, BLOCK_N))."""
    token = tl.program_id(0).to(tl.int64)
    offs_n = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    dtype = out_ptr.dtype.element_ty
    res = tl.zeros([BLOCK_N], tl.float32)
    for j in tl.static_range(TOP_K):
        pair = token * TOP_K + j
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        a_ptrs = a_ptr + pair * stride_a + offs_k
        b_ptrs = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = offs_k < K - k0
            a = _load_k(a_ptrs, k_ok, EVEN_K).to(tl.float32)[None, :]
            acc += _load_k(b_ptrs, k_ok[None, :], EVEN_K).to(tl.float32) * a
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        res += tl.sum(acc, axis=1).to(dtype).to(tl.float32) * tl.load(weights_ptr + pair)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + token * stride_out + cols, res.to(dtype), mask=cols < N)
