"""Triton bodies of the fused sparse-MoE op (launchers and shapes: kernels/moe.py).

Names: T tokens, E experts, k picks per token, P = T*k token-expert pairs (pair p is token p // k, pick p % k),
H hidden, I moe_intermediate. The sorted layout has "slots": expert 0's pairs in pair order, padded with the
sentinel P up to a multiple of BLOCK_M, then expert 1's, ...; block b (slots b*BLOCK_M ..) belongs to one expert,
block_expert[b]. Only the first num_padded slots are defined; programs past them return at once, which lets the
launchers use a fixed grid sized for the worst case (no host sync, CUDA-graph safe).
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents


# Counts that change with every batch (T, P, num_m) are not specialised, so a new batch size never recompiles.
@triton.jit(do_not_specialize=["T"])
def moe_route_kernel(logits_ptr, weights_ptr, ids_ptr, counts_ptr, T, E, stride_t,
                     TOP_K: tl.constexpr, RENORM: tl.constexpr, COUNT: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                     PDL: tl.constexpr):
    """logits [T, E] -> weights [T, k] fp32, ids [T, k] int32 (softmax, k argmax passes, renormalise); with COUNT
    also counts[e] += picks of expert e (the histogram the align kernel needs). PDL: a dependent grid launched
    with launch_pdl may start now (it must griddepcontrol.wait before reading ids). Grid: cdiv(T, BLOCK_T)."""
    if PDL:
        gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    picks = tl.arange(0, BLOCK_K)
    row_ok, col_ok = rows < T, cols < E
    x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)
    x = tl.where(row_ok[:, None], x, 0.0)  # rows past T stay finite: no NaN from an all -inf row
    p = tl.exp(x - tl.max(x, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    p = tl.where(col_ok[None, :], p, -1.0)  # columns past E are never picked (a real p is >= 0)
    w = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)
    ids = tl.zeros([BLOCK_T, BLOCK_K], tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(p, axis=1)
        arg = tl.min(tl.where(p == best[:, None], cols[None, :], BLOCK_E), axis=1)  # lowest index on ties
        w = tl.where(picks[None, :] == j, best[:, None], w)
        ids = tl.where(picks[None, :] == j, arg[:, None], ids)
        p = tl.where(cols[None, :] == arg[:, None], -2.0, p)
    pick_ok = picks < TOP_K
    if RENORM:
        w = w / tl.sum(tl.where(pick_ok[None, :], w, 0.0), axis=1)[:, None]
    ok = row_ok[:, None] & pick_ok[None, :]
    offs = rows[:, None] * TOP_K + picks[None, :]
    tl.store(weights_ptr + offs, w, mask=ok)
    tl.store(ids_ptr + offs, ids, mask=ok)
    if COUNT:
        hist = tl.histogram(tl.reshape(ids, [BLOCK_T * BLOCK_K]), BLOCK_E, mask=tl.reshape(ok, [BLOCK_T * BLOCK_K]))
        tl.atomic_add(counts_ptr + cols, hist, mask=col_ok)


@triton.jit(do_not_specialize=["P", "SPLIT_P"])
def moe_align_kernel(ids_ptr, counts_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr, P, E, SPLIT_P,
                     BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (e, s) writes expert e's part of the sorted layout for the pairs [s*SPLIT_P, (s+1)*SPLIT_P) of
    ids [P]: those of expert e in pair order (a stable compaction by cumsum, after the hits of the earlier splits
    are counted without a scan), e into block_expert for their blocks; split 0 also writes the sentinel P into the
    expert's padding slots and program (0, 0) num_padded. counts [E] comes from moe_route_kernel. SPLIT_P is a
    multiple of BLOCK_P. Splitting cuts the serial scan chain (one cumsum + reduction per BLOCK_P step, 8 steps at
    P = 32768) to SPLIT_P / BLOCK_P steps. Grid: (E, cdiv(P, SPLIT_P))."""
    e = tl.program_id(0)
    split = tl.program_id(1)
    experts = tl.arange(0, BLOCK_E)
    counts = tl.load(counts_ptr + experts, mask=experts < E, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    start = tl.sum(tl.where(experts < e, padded, 0), axis=0)
    count = tl.load(counts_ptr + e)
    n_blocks = (count + BLOCK_M - 1) // BLOCK_M
    if split == 0:
        if e == 0:
            tl.store(num_padded_ptr, tl.sum(padded, axis=0))
        tail = start + count + tl.arange(0, BLOCK_M)
        tl.store(sorted_ptr + tail, tl.zeros([BLOCK_M], tl.int32) + P, mask=tail < start + n_blocks * BLOCK_M)
    lane = tl.arange(0, BLOCK_P)
    begin = split * SPLIT_P
    end = tl.minimum(begin + SPLIT_P, P)
    seen = tl.zeros([BLOCK_P], tl.int32)
    p0 = 0
    while p0 < begin:  # the earlier splits' hits of e: independent loads, one reduction at the end
        seen += (tl.load(ids_ptr + p0 + lane) == e).to(tl.int32)  # full steps: begin is a multiple of BLOCK_P
        p0 += BLOCK_P
    found = tl.sum(seen, axis=0)
    p0 = begin
    while p0 < end:  # a while loop: the interpreter cannot run a for loop over a runtime bound
        offs = p0 + lane
        hit = (tl.load(ids_ptr + offs, mask=offs < end, other=-1) == e).to(tl.int32)
        rank = found + tl.cumsum(hit, axis=0) - 1
        tl.store(sorted_ptr + start + rank, offs, mask=hit != 0)
        # every block in use holds a real pair (padding < BLOCK_M), so this names each block's expert
        tl.store(block_expert_ptr + (start + rank) // BLOCK_M, tl.zeros([BLOCK_P], tl.int32) + e, mask=hit != 0)
        found += tl.sum(hit, axis=0)
        p0 += BLOCK_P


@triton.jit
def _tile(num_m, num_n, GROUP_M: tl.constexpr):
    # grouped order: GROUP_M row blocks sweep the columns together, so a weight tile is reused from L2
    pid = tl.program_id(0)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size, (pid % per_group) // size


@triton.jit
def _sigmoid(x):
    z = tl.exp(-tl.abs(x))  # overflow-free
    return tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    # "ieee": fp32 inputs get exact fp32 products (the reference's), not TF32. "upcast": the CPU interpreter, whose
    # dot would multiply the raw bits of bf16 operands.
    if PRECISION == "ieee":
        return tl.dot(a, b, acc, input_precision="ieee")
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def _load_k(ptrs, k_ok, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=k_ok, other=0.0)


@triton.jit(do_not_specialize=["P", "num_m"])
def moe_gate_up_kernel(x_ptr, w_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr,
                       P, N, num_m, stride_x, stride_we, stride_wn, stride_out, K: tl.constexpr,
                       TOP_K: tl.constexpr, PRECISION: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       B_DESC: tl.constexpr = False):
    """out[slot, n] = silu(x[tok] . gate[e, n]) * (x[tok] . up[e, n]) for the slots of each block.

    x [T, K=H]; w [E, 2N, K] (gate rows 0..N-1, up rows N..2N-1); out [slots, N=I], rows in slot order (padding
    rows hold junk from token 0 that the down kernel never writes out). Grid: num_m * cdiv(N, BLOCK_N).
    B_DESC (sm_90+ on CUDA): the weight tiles come by TMA through a host tensor descriptor in w_ptr."""
    pid_m, pid_n = _tile(num_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    slots = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_ptr + slots)
    tokens = tl.where(pairs < P, pairs // TOP_K, 0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tokens[:, None] * stride_x + offs_k[None, :]
    if B_DESC:  # w_ptr: a TMA descriptor over w viewed [E*2N, K], block [BLOCK_N, BLOCK_K] (zero past K)
        row_g = (expert * 2 * N + pid_n * BLOCK_N).to(tl.int32)  # rows past N: junk in unstored columns
    else:
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N  # wrapped columns load real rows; not stored
        g_ptrs = w_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
        u_ptrs = g_ptrs + N * stride_wn
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = _load_k(a_ptrs, k_ok[None, :], EVEN_K)
        if B_DESC:
            gate = _dot(a, w_ptr.load([row_g, k0]).T, gate, PRECISION)
            up = _dot(a, w_ptr.load([row_g + N, k0]).T, up, PRECISION)
        else:
            gate = _dot(a, _load_k(g_ptrs, k_ok[:, None], EVEN_K), gate, PRECISION)
            up = _dot(a, _load_k(u_ptrs, k_ok[:, None], EVEN_K), up, PRECISION)
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
    dtype = out_ptr.dtype.element_ty
    # round as the reference does: each projection, then silu, then the product, in the input dtype
    gate = gate.to(dtype).to(tl.float32)
    act = (gate * _sigmoid(gate)).to(dtype).to(tl.float32)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + slots[:, None].to(tl.int64) * stride_out + cols[None, :],
             (act * up.to(dtype).to(tl.float32)).to(dtype), mask=cols[None, :] < N)


@triton.jit(do_not_specialize=["P", "num_m"])
def moe_down_kernel(a_ptr, w_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr, weights_ptr,
                    P, N, num_m, stride_a, stride_we, stride_wn, stride_out, K: tl.constexpr,
                    PRECISION: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, ATOMIC: tl.constexpr = False,
                    TOP_K: tl.constexpr = 1, B_DESC: tl.constexpr = False, A_DESC: tl.constexpr = False):
    """out[pair, n] = weight[pair] * (a[slot] . w[e, n]) for the real pairs of each block.

    a [slots, K=I] (moe_gate_up_kernel's output); w [E, N=H, K]; weights [P] fp32; out [P, N]. Grid as gate_up.
    ATOMIC: out is fp32 [T, N] (zeroed) and each pair adds into its token's row, out[pair // TOP_K, n] += ...
    (the k-sum fused; the order of the k fp32 adds is not fixed). B_DESC: w by TMA, as in moe_gate_up_kernel;
    A_DESC (not with ATOMIC, which reads a's dtype from a_ptr): a by TMA too, its rows being contiguous slots."""
    pid_m, pid_n = _tile(num_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    slots = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    if not A_DESC:  # else a_ptr: a TMA descriptor over a [slots, K], block [BLOCK_M, BLOCK_K] (rows in slot order)
        a_ptrs = a_ptr + slots[:, None].to(tl.int64) * stride_a + offs_k[None, :]
    if B_DESC:  # w_ptr: a TMA descriptor over w viewed [E*N, K], block [BLOCK_N, BLOCK_K]
        row_b = (expert * N + pid_n * BLOCK_N).to(tl.int32)  # rows past N: junk in unstored columns
    else:
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
        b_ptrs = w_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        if A_DESC:
            a = a_ptr.load([(pid_m * BLOCK_M).to(tl.int32), k0])
        else:
            a = _load_k(a_ptrs, k_ok[None, :], EVEN_K)
            a_ptrs += BLOCK_K
        if B_DESC:
            acc = _dot(a, w_ptr.load([row_b, k0]).T, acc, PRECISION)
        else:
            acc = _dot(a, _load_k(b_ptrs, k_ok[:, None], EVEN_K), acc, PRECISION)
            b_ptrs += BLOCK_K
    dtype = out_ptr.dtype.element_ty
    pairs = tl.load(sorted_ptr + slots)
    real = pairs < P
    weight = tl.load(weights_ptr + pairs, mask=real, other=0.0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = real[:, None] & (cols[None, :] < N)
    if ATOMIC:
        res = acc.to(a_ptr.dtype.element_ty).to(tl.float32) * weight[:, None]
        rows = (pairs // TOP_K).to(tl.int64)
        tl.atomic_add(out_ptr + rows[:, None] * stride_out + cols[None, :], res, mask=ok, sem="relaxed")
    else:
        res = acc.to(dtype).to(tl.float32) * weight[:, None]  # the projection rounded to dtype, as the reference
        tl.store(out_ptr + pairs[:, None].to(tl.int64) * stride_out + cols[None, :], res.to(dtype), mask=ok)


@triton.jit
def moe_sum_kernel(pairs_ptr, out_ptr, N, stride_p, stride_out, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[t] = sum over j < k of pairs[t*k + j], in fp32. pairs [P, N] -> out [T, N]. Grid: (T, cdiv(N, BLOCK_N))."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = cols < N
    acc = tl.zeros([BLOCK_N], tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(pairs_ptr + (t * TOP_K + j) * stride_p + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)
