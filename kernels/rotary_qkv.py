"""Rotary on the ViT's fused qkv projection, writing q, k, v in the layout the attention backend wants.

    q, k, v = rotary_qkv(qkv, cos, sin, heads, contiguous=backend.needs_contiguous)

qkv [T, 3*H*D] is the output of one q|k|v matmul. contiguous=False rotates q and k in place and returns strided
views of qkv (token stride 3*H*D): no copy, for backends that take strided inputs (fa3, sdpa). contiguous=True
writes rotated q, k and a copy of v into one new [3, T, H, D] buffer in the same single pass, replacing the three
.contiguous() copies plus an in-place rotary that a backend with packed-only inputs (cuDNN) would otherwise need.
CUDA -> one Triton launch (kernels/triton/rotary_qkv.py); CPU -> kernels.reference.rotary_qkv.
"""

from __future__ import annotations

import torch

from kernels import reference
from kernels._dispatch import check, check_float, check_last_contiguous, check_same_device, next_pow2, use_triton

# tokens x heads per program. 16 x 4 at D/2 <= 64 holds [16, 4, 64] halves per load, the element count of the 2D
# rope's 32 x 2 tile (kernels.rotary.vision_launch); not swept on the GPU yet (benchmarks/bench_kernels.py).
BLOCK_T, BLOCK_H, NUM_WARPS = 16, 4, 4


def _check(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> int:
    check(qkv.dim() == 2, lambda: f"qkv must be [T, 3*H*D], got shape {tuple(qkv.shape)}")
    check(isinstance(heads, int) and heads > 0, lambda: f"heads must be a positive int, got {heads!r}")
    width = qkv.shape[1]
    check(width % (3 * heads) == 0 and (width // (3 * heads)) % 2 == 0,
          lambda: f"qkv width {width} must be 3 * heads ({heads}) * an even head_dim")
    d = width // (3 * heads)
    check_float("qkv", qkv)
    check_last_contiguous("qkv", qkv)
    for name, c in (("cos", cos), ("sin", sin)):
        check(c.shape == (qkv.shape[0], d // 2), lambda: f"{name} must be [T, D/2] = {(qkv.shape[0], d // 2)}, "
              f"got {tuple(c.shape)}")
        check_float(name, c)
        check_last_contiguous(name, c)
    check_same_device(("qkv", qkv), ("cos", cos), ("sin", sin))
    return d


def _launch(qkv, dst, cos, sin, heads: int, d: int, copy_v: bool, block_t: int, block_h: int,
            num_warps: int) -> None:
    # dst: qkv itself viewed [T, 3, H, D] (in place) or a [3, T, H, D] buffer; strides passed per axis
    from kernels.triton.rotary_qkv import rope_qkv_kernel

    t = qkv.shape[0]
    if t == 0:
        return
    st, sp, sh = qkv.stride(0), heads * d, d
    dt, dp, dh = (st, sp, sh) if dst is qkv else (dst.stride(1), dst.stride(0), dst.stride(2))
    grid = (-(-t // block_t), -(-heads // block_h))
    rope_qkv_kernel[grid](qkv, dst, cos, sin, t, heads, st, sp, sh, dt, dp, dh, cos.stride(0), sin.stride(0),
                          HALF=d // 2, D=d, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_F=next_pow2(d // 2),
                          BLOCK_D=next_pow2(d), COPY_V=copy_v, num_warps=num_warps)


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, contiguous: bool = False,
               impl: str = "auto", *, block_t: int = BLOCK_T, block_h: int = BLOCK_H,
               num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [T, 3*H*D] (last dim contiguous), cos/sin [T, D/2] -> q, k, v [T, H, D] with neox rotary on q and k.

    contiguous=False: in place in qkv, returns strided views of it. contiguous=True: qkv is left as it was and
    q, k, v are the contiguous slices of one new [3, T, H, D] buffer.
    """
    d = _check(qkv, cos, sin, heads)
    if not use_triton(impl, qkv, cos, sin):
        return reference.rotary_qkv(qkv, cos, sin, heads, contiguous)
    t = qkv.shape[0]
    if contiguous:
        dst = torch.empty((3, t, heads, d), dtype=qkv.dtype, device=qkv.device)
        _launch(qkv, dst, cos, sin, heads, d, True, block_t, block_h, num_warps)
        return dst[0], dst[1], dst[2]
    _launch(qkv, qkv, cos, sin, heads, d, False, block_t, block_h, num_warps)
    parts = qkv.view(t, 3, heads, d)
    return parts[:, 0], parts[:, 1], parts[:, 2]
