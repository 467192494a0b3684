"""Triton bodies of the gated activations: x [M, 2N] = [gate | up] -> out [M, N].

Grid: (M, cdiv(N, BLOCK)). The activation is rounded to the input dtype before the multiply, as the reference
(torch's silu/gelu on the dtype, then a dtype multiply) does.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    # overflow-free: exp of a non-positive argument only
    z = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


@triton.jit
def _gelu_tanh(g):
    # 0.5 g (1 + tanh(y)), y = sqrt(2/pi) (g + 0.044715 g^3); 1 + tanh(y) = 2 sigmoid(2y)
    y = 0.7978845608028654 * (g + 0.044715 * g * g * g)
    return g * _sigmoid(2.0 * y)


@triton.jit
def gated_act_kernel(x_ptr, out_ptr, stride_x, stride_out, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + N + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == "silu":
        a = gate * _sigmoid(gate)
    else:
        a = _gelu_tanh(gate)
    a = a.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (a * up).to(out_ptr.dtype.element_ty), mask=mask)
