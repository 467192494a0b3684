"""Triton body of fused_add_rmsnorm with the MoE router's GEMV in the same launch (launcher: kernels/norm_router.py).

A Qwen3-VL-MoE decode layer otherwise runs the post-attention add + RMSNorm, then a cuBLAS GEMV of the router
([T, H] x [E, H]^T, 512 KB of weights at E=128, H=2048: latency-, not bandwidth-bound), then the experts. Here
program (t, j) recomputes row t's add + RMSNorm (H elements, cheap) and takes the logits of experts
[j*BLOCK_E, (j+1)*BLOCK_E) from the normalised row held in registers; program (t, 0) also stores the normalised row
and the sum. Only for few rows (the launcher's FUSED_MAX_ROWS): each program re-reads its row, so the work grows
with E / BLOCK_E. Rounding as reference.fused_add_rmsnorm then an fp32-accumulated linear rounded to the dtype.
"""

import triton
import triton.language as tl

from kernels.triton.norm import _rms_scale


@triton.jit
def add_rmsnorm_router_kernel(x_ptr, res_ptr, w_ptr, rw_ptr, out_ptr, sum_ptr, logits_ptr, stride_x, stride_res,
                              stride_out, stride_sum, stride_rw, stride_l, N, E, eps,
                              BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """x, res [T, N]; w [N]; rw [E, N] -> out = rmsnorm(x + res) [T, N], sum = x + res [T, N], logits = out . rw^T
    [T, E]. Grid: (T, cdiv(E, BLOCK_E))."""
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    experts = j * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = experts < E
    # the router rows first: their load does not wait for the norm's reductions
    rw = tl.load(rw_ptr + experts[:, None].to(tl.int64) * stride_rw + cols[None, :],
                 mask=e_ok[:, None] & mask[None, :], other=0.0)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
    s = (x + r).to(sum_ptr.dtype.element_ty)
    y = _rms_scale(s.to(tl.float32), w_ptr, cols, mask, N, eps, sum_ptr.dtype.element_ty)
    y = y.to(out_ptr.dtype.element_ty)
    if j == 0:
        tl.store(sum_ptr + row * stride_sum + cols, s, mask=mask)
        tl.store(out_ptr + row * stride_out + cols, y, mask=mask)
    logits = tl.sum(rw.to(tl.float32) * y.to(tl.float32)[None, :], axis=1)
    tl.store(logits_ptr + row * stride_l + experts, logits.to(logits_ptr.dtype.element_ty), mask=e_ok)
