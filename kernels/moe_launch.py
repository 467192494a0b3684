"""Launchers of the fused-MoE Triton kernels (kernels/triton/moe.py), one per stage; kernels.moe chains them.

Every output has a size fixed by (T, k, E, BLOCK_M) alone and nothing reads a device value on the host, so a
chain of these launches never synchronises and can be captured in a CUDA graph. Shapes as in kernels.triton.moe.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from kernels._dispatch import next_pow2
from kernels.moe_config import GemmTile


class SortedPairs(NamedTuple):
    """The expert-contiguous layout of the P = T*k pairs (see kernels/triton/moe.py)."""
    sorted_ids: torch.Tensor  # [max_slots] int32: pair index, or P in a padding slot
    block_expert: torch.Tensor  # [max_blocks] int32: the expert of each BLOCK_M slots
    num_padded: torch.Tensor  # [1] int32: slots in use (a multiple of BLOCK_M)
    block_m: int


ALIGN_SPLITS = 4  # programs per expert in align (each scans its share of the pairs; see moe_align_kernel)
ALIGN_SMALL_BLOCK, ALIGN_LARGE_BLOCK = 256, 4096  # align's scan step: up to 256 pairs one step of 256, else 4096


def max_slots(pairs: int, experts: int, block_m: int) -> int:
    """Worst-case padded slots: every touched expert (at most min(E, P)) wastes up to BLOCK_M - 1 slots."""
    return pairs + min(experts, pairs) * (block_m - 1)


def route(logits: torch.Tensor, top_k: int, renormalize: bool, counts: torch.Tensor | None = None,
          pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights [T, k] fp32, ids [T, k] int32); counts [E] int32 (zeroed) gets += the picks.
    pdl: let the next (launch_pdl) kernel start early (sm_90+)."""
    from kernels.triton.moe import moe_route_kernel

    t, e = logits.shape
    weights = torch.empty(t, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(t, top_k, dtype=torch.int32, device=logits.device)
    if t:
        block_e = next_pow2(e)
        block_t = max(1, min(16, 2048 // block_e))  # one tile size for every T: no recompiles per batch
        moe_route_kernel[(triton_cdiv(t, block_t),)](
            logits, weights, ids, ids if counts is None else counts, t, e, logits.stride(0),
            TOP_K=top_k, RENORM=renormalize, COUNT=counts is not None, BLOCK_T=block_t, BLOCK_E=block_e,
            BLOCK_K=next_pow2(top_k), PDL=pdl, num_warps=4)
    return weights, ids


def count_experts(ids: torch.Tensor, experts: int) -> torch.Tensor:
    """[E] int32 picks per expert of ids [T, k], on the device (for callers that routed elsewhere)."""
    counts = torch.zeros(experts, dtype=torch.int32, device=ids.device)
    return counts.scatter_add_(0, ids.reshape(-1).long(), torch.ones_like(ids.reshape(-1)))


def align(ids: torch.Tensor, counts: torch.Tensor, experts: int, block_m: int) -> SortedPairs:
    """ids [T, k] int32 and their counts [E] -> the sorted, padded layout."""
    from kernels.triton.moe import moe_align_kernel

    pairs = ids.numel()
    slots = max_slots(pairs, experts, block_m)
    sorted_ids = torch.empty(slots, dtype=torch.int32, device=ids.device)
    block_expert = torch.empty(triton_cdiv(slots, block_m), dtype=torch.int32, device=ids.device)
    num_padded = torch.empty(1, dtype=torch.int32, device=ids.device)
    # pairs scanned per step by each program (two variants)
    block_p = ALIGN_SMALL_BLOCK if pairs <= ALIGN_SMALL_BLOCK else ALIGN_LARGE_BLOCK
    steps = max(1, triton_cdiv(pairs, block_p))
    split_p = triton_cdiv(steps, min(steps, ALIGN_SPLITS)) * block_p  # <= 2 scan steps per program at P = 32768
    moe_align_kernel[(experts, max(1, triton_cdiv(pairs, split_p)))](
        ids, counts, sorted_ids, block_expert, num_padded, pairs, experts, split_p, BLOCK_M=block_m,
        BLOCK_E=next_pow2(experts), BLOCK_P=block_p, num_warps=8 if block_p >= 2048 else 4)
    return SortedPairs(sorted_ids, block_expert, num_padded, block_m)


def gate_up(x: torch.Tensor, w13: torch.Tensor, layout: SortedPairs, top_k: int, tile: GemmTile,
            out: torch.Tensor) -> None:
    """out [max_slots, I] = silu(gate) * up of x [T, H] through each slot's expert of w13 [E, 2I, H]."""
    from kernels.triton.moe import moe_gate_up_kernel

    inter, hidden = w13.shape[1] // 2, w13.shape[2]
    num_m = layout.block_expert.shape[0]
    grid = (num_m * triton_cdiv(inter, tile.block_n),)
    w = _weight_desc(w13, tile) if tile.tma else w13
    moe_gate_up_kernel[grid](
        x, w, out, layout.sorted_ids, layout.block_expert, layout.num_padded,
        x.shape[0] * top_k, inter, num_m, x.stride(0), w13.stride(0), w13.stride(1), out.stride(0), K=hidden,
        TOP_K=top_k, PRECISION=_precision(x), EVEN_K=hidden % tile.block_k == 0, BLOCK_M=layout.block_m,
        BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, GROUP_M=tile.group_m, B_DESC=tile.tma,
        num_warps=tile.num_warps, num_stages=tile.num_stages)


def down(inter: torch.Tensor, w2: torch.Tensor, layout: SortedPairs, weights: torch.Tensor, tile: GemmTile,
         out: torch.Tensor, atomic_top_k: int = 0) -> None:
    """out [P, H] = weight * (inter [slots, I] through w2 [E, H, I]) for each real pair; with atomic_top_k = k,
    out is a zeroed fp32 [T, H] that each pair adds into (the k-sum fused)."""
    from kernels.triton.moe import moe_down_kernel

    hidden, k_dim = w2.shape[1], w2.shape[2]
    num_m = layout.block_expert.shape[0]
    grid = (num_m * triton_cdiv(hidden, tile.block_n),)
    w = _weight_desc(w2, tile) if tile.tma else w2
    a_desc = tile.tma and not atomic_top_k
    a = _rows_desc(inter, layout.block_m, tile.block_k) if a_desc else inter
    moe_down_kernel[grid](
        a, w, out, layout.sorted_ids, layout.block_expert, layout.num_padded, weights,
        weights.shape[0], hidden, num_m, inter.stride(0), w2.stride(0), w2.stride(1),
        out.stride(0), K=k_dim,
        PRECISION=_precision(inter), EVEN_K=k_dim % tile.block_k == 0, BLOCK_M=layout.block_m,
        BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, GROUP_M=tile.group_m, ATOMIC=atomic_top_k > 0,
        TOP_K=max(atomic_top_k, 1), B_DESC=tile.tma, A_DESC=a_desc, num_warps=tile.num_warps,
        num_stages=tile.num_stages)


def _weight_desc(w: torch.Tensor, tile: GemmTile):
    """A host TMA descriptor over the expert stack w [E, R, K] viewed [E*R, K], block [block_n, block_k] (zero
    padding past K and past the last row). Its base is the weights' fixed address, so it is CUDA-graph safe."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    e, r, k = w.shape
    if w.stride(0) != r * w.stride(1) or w.stride(2) != 1:
        raise ValueError(f"a TMA weight tile needs w rows packed, got strides {w.stride()}")
    return TensorDescriptor(w, [e * r, k], [w.stride(1), 1], [tile.block_n, tile.block_k])


def _rows_desc(a: torch.Tensor, block_m: int, block_k: int):
    """A host TMA descriptor over a 2-D row-major a [R, K], block [block_m, block_k] (zero past the ends)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(a, list(a.shape), [a.stride(0), 1], [block_m, block_k])


def sum_picks(pairs_out: torch.Tensor, top_k: int, out: torch.Tensor) -> None:
    """out [T, H] = the k rows of pairs_out [T*k, H] of each token, summed in fp32."""
    from kernels.triton.moe import moe_sum_kernel

    t, h = out.shape
    block_n = min(1024, next_pow2(h))
    moe_sum_kernel[(t, triton_cdiv(h, block_n))](pairs_out, out, h, pairs_out.stride(0), out.stride(0),
                                                 TOP_K=top_k, BLOCK_N=block_n, num_warps=4)


def pairs_gate_up(x: torch.Tensor, w13: torch.Tensor, top_k: int, tile: GemmTile, out: torch.Tensor,
                  ids: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor | None = None,
                  renormalize: bool = True) -> None:
    """The pairs path's step 1 (kernels/triton/moe_pairs.py): out [P, I] = silu(gate) * up of each pair. With
    logits [T, E] the kernel routes too and fills ids [P] int32 / weights [P] fp32; without, it reads ids."""
    from kernels.triton.moe_pairs import moe_pairs_gate_up_kernel

    inter, hidden = w13.shape[1] // 2, w13.shape[2]
    experts = w13.shape[0]
    route = logits is not None
    grid = (out.shape[0], triton_cdiv(inter, tile.block_n))
    moe_pairs_gate_up_kernel[grid](
        x, w13, out, logits if route else x, ids, weights, inter, experts, x.stride(0), w13.stride(0),
        w13.stride(1), logits.stride(0) if route else 0, out.stride(0), K=hidden, TOP_K=top_k, ROUTE=route,
        RENORM=renormalize, EVEN_K=hidden % tile.block_k == 0, BLOCK_E=next_pow2(experts), BLOCK_N=tile.block_n,
        BLOCK_K=tile.block_k, num_warps=tile.num_warps, num_stages=tile.num_stages)


def pairs_down(inter: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, top_k: int,
               tile: GemmTile, out: torch.Tensor) -> None:
    """The pairs path's step 2: out [T, H] = sum over each token's k pairs of weight * (inter [P, I] through w2)."""
    from kernels.triton.moe_pairs import moe_pairs_down_kernel

    hidden, k_dim = w2.shape[1], w2.shape[2]
    grid = (out.shape[0], triton_cdiv(hidden, tile.block_n))
    moe_pairs_down_kernel[grid](
        inter, w2, out, ids, weights, hidden, inter.stride(0), w2.stride(0), w2.stride(1), out.stride(0), K=k_dim,
        TOP_K=top_k, EVEN_K=k_dim % tile.block_k == 0, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
        num_warps=tile.num_warps, num_stages=tile.num_stages)


def decode_fused(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int, gate_up: GemmTile,
                 down: GemmTile, acc: torch.Tensor, logits: torch.Tensor | None = None, renormalize: bool = True,
                 ids: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
    """The decode path's one kernel (kernels/triton/moe_decode.py): acc [T, H] fp32 (zeroed) += the whole MoE.

    Tiles: gate_up.block_n = BLOCK_I (intermediate columns per program), gate_up.block_k = the k-step over H,
    down.block_n = BLOCK_H (rows of w2 per step); warps and stages are gate_up's. Routing from logits [T, E], or
    the given flat ids [P] int32 / weights [P] fp32."""
    from kernels.triton.moe_decode import moe_decode_kernel

    inter, hidden, experts = w2.shape[2], w2.shape[1], w13.shape[0]
    pairs = x.shape[0] * top_k
    route = logits is not None
    grid = (triton_cdiv(inter, gate_up.block_n), pairs)
    moe_decode_kernel[grid](
        x, w13, w2, acc, logits if route else x, ids if not route else acc, weights if not route else acc,
        inter, experts, x.stride(0), w13.stride(0), w13.stride(1), w2.stride(0), w2.stride(1),
        logits.stride(0) if route else 0, acc.stride(0), H=hidden, TOP_K=top_k, ROUTE=route, RENORM=renormalize,
        EVEN_K=hidden % gate_up.block_k == 0, EVEN_H=hidden % down.block_n == 0, BLOCK_E=next_pow2(experts),
        BLOCK_I=gate_up.block_n, BLOCK_K=gate_up.block_k, BLOCK_H=down.block_n, num_warps=gate_up.num_warps,
        num_stages=gate_up.num_stages)


def _precision(x: torch.Tensor) -> str:
    """tl.dot's mode (see kernels.triton.moe._dot): CPU tensors only run under the interpreter."""
    if not x.is_cuda:
        return "upcast"
    return "ieee" if x.dtype == torch.float32 else "default"


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def gemv_gate_up(x: torch.Tensor, w13: torch.Tensor, top_k: int, tile: GemmTile, out: torch.Tensor,
                 logits: torch.Tensor | None = None, ids: torch.Tensor | None = None, renormalize: bool = True,
                 pdl: bool = False, pdl_wait: bool = False) -> None:
    """The gemv paths' step 1 (kernels/triton/moe_gemv.py): out [P, I] = silu(gate) * up of each pair, the pick
    routed from logits [T, E] or read from ids [P] int32. pdl: let the next (launch_pdl) kernel start early;
    pdl_wait: launched itself as a programmatic dependent of the kernel that wrote ids (route(pdl=True))."""
    from kernels.triton.moe_gemv import moe_gemv_gate_up_kernel

    inter, hidden, experts = w13.shape[1] // 2, w13.shape[2], w13.shape[0]
    route = logits is not None
    grid = (out.shape[0], triton_cdiv(inter, tile.block_n))
    moe_gemv_gate_up_kernel[grid](
        x, w13, out, logits if route else x, ids if not route else out, inter, experts, x.stride(0),
        w13.stride(0), w13.stride(1), logits.stride(0) if route else 0, out.stride(0), K=hidden, TOP_K=top_k,
        ROUTE=route, RENORM=renormalize, BLOCK_E=next_pow2(experts), BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
        PDL=pdl, PDL_WAIT=pdl_wait, num_warps=tile.num_warps, num_stages=tile.num_stages,
        **({"launch_pdl": True} if pdl_wait else {}))


def gemv_down(inter: torch.Tensor, w2: torch.Tensor, top_k: int, tile: GemmTile, out: torch.Tensor,
              logits: torch.Tensor | None = None, ids: torch.Tensor | None = None,
              weights: torch.Tensor | None = None, renormalize: bool = True, pdl: bool = False) -> None:
    """The gemv paths' step 2: out [T, H] = sum over each token's k picks of weight * (inter [P, I] through w2),
    the picks routed from logits or read from ids [P] / weights [P]. pdl: launched as a programmatic dependent of
    the gate_up kernel (it waits for it before reading inter)."""
    from kernels.triton.moe_gemv import moe_gemv_down_kernel

    hidden, k_dim, experts = w2.shape[1], w2.shape[2], w2.shape[0]
    route = logits is not None
    grid = (out.shape[0], triton_cdiv(hidden, tile.block_n))
    extra = {"launch_pdl": True} if pdl else {}  # only on CUDA (sm_90+): the interpreter knows no such option
    moe_gemv_down_kernel[grid](
        inter, w2, out, logits if route else inter, ids if not route else out, weights if not route else out,
        hidden, experts, inter.stride(0), w2.stride(0), w2.stride(1), logits.stride(0) if route else 0,
        out.stride(0), K=k_dim, TOP_K=top_k, ROUTE=route, RENORM=renormalize, BLOCK_E=next_pow2(experts),
        KP=next_pow2(top_k), BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, PDL=pdl, num_warps=tile.num_warps,
        num_stages=tile.num_stages, **extra)


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch (griddepcontrol) and TMA weight tiles need sm_90+."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
