"""Triton body of fused_add_layernorm: one program per row, the row held in registers.

sum = x + residual (rounded to the residual stream's dtype, as an unfused add would), out = layernorm(sum) * w + b;
fp32 math. out and sum may not alias x or residual's rows of other programs (each program owns one row).
"""

import triton
import triton.language as tl


@triton.jit
def add_layernorm_kernel(x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, sum_ptr, stride_x, stride_res, stride_out,
                         stride_sum, N, eps, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
    s = (x + r).to(sum_ptr.dtype.element_ty)
    tl.store(sum_ptr + row * stride_sum + cols, s, mask=mask)
    sf = s.to(tl.float32)
    mean = tl.sum(sf, axis=0) / N
    xc = tl.where(mask, sf - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    y = xc * rstd * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
