"""Plain-torch versions of every kernel: the CPU path and the oracle of every kernel test.

Shapes: T tokens, H heads, D head_dim. Math in float32, results cast back to the input dtype.
"""

from __future__ import annotations

import torch


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., N], weight: [N]
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rmsnorm(x + residual), x + residual)."""
    summed = (x.float() + residual.float()).to(x.dtype)
    return rmsnorm(summed, weight, eps), summed


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), weight.float(),
                                          None if bias is None else bias.float(), eps).to(x.dtype)


def fused_add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (layernorm(x + residual), x + residual); the sum is rounded to x's dtype first, as an unfused add."""
    summed = (x.float() + residual.float()).to(x.dtype)
    return layernorm(summed, weight, bias, eps), summed


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [..., 2N] = [gate | up] -> [..., N]
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # x: [..., K], weight: [N, K] -> gelu_tanh(x @ weight.T + bias) [..., N]
    return torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias), approximate="tanh")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # neox style: x = [x1 | x2], cos/sin: [T, D/2] broadcast over heads
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, None, :].float(), sin[:, None, :].float()
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """In-place neox rotary on q [T, Hq, D] and k [T, Hk, D] with cos/sin [T, D/2] (2D vision rope)."""
    q.copy_(_rotate(q, cos, sin))
    k.copy_(_rotate(k, cos, sin))


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
               contiguous: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [T, 3*H*D] -> q, k, v [T, H, D], neox rotary on q and k. contiguous=False: in place in qkv, strided
    views returned; True: a new [3, T, H, D] buffer (qkv untouched), its contiguous slices returned."""
    t = qkv.shape[0]
    parts = qkv.view(t, 3, heads, -1)
    # select, not unbind: unbind's views refuse in-place writes where autograd records
    if contiguous:
        parts = parts.transpose(0, 1).contiguous()  # [3, T, H, D]
        q, k, v = parts[0], parts[1], parts[2]
    else:
        q, k, v = parts[:, 0], parts[:, 1], parts[:, 2]
    apply_rotary_(q, k, cos, sin)
    return q, k, v


def mrope_axis_map(mrope_section: list[int] | tuple[int, ...], interleaved: bool) -> torch.Tensor:
    """Axis (0=t, 1=h, 2=w) used by each of the D/2 rotary frequencies.

    Contiguous (Qwen2.5-VL): [t]*s0 + [h]*s1 + [w]*s2. Interleaved (Qwen3-VL): t,h,w,t,h,w,... with h only at
    i % 3 == 1 and i < 3*s1, w only at i % 3 == 2 and i < 3*s2, t everywhere else.
    """
    half = sum(mrope_section)
    if not interleaved:
        return torch.cat([torch.full((s,), a, dtype=torch.long) for a, s in enumerate(mrope_section)])
    axis = torch.zeros(half, dtype=torch.long)
    for a in (1, 2):
        axis[a: 3 * mrope_section[a]: 3] = a
    return axis


def mrope_cos_sin(positions: torch.Tensor, cos_sin_cache: torch.Tensor, mrope_section, interleaved: bool):
    """positions [3, T] int64, cos_sin_cache [max_pos, D] = [cos | sin] of pos * inv_freq -> cos, sin [T, D/2]."""
    half = cos_sin_cache.shape[-1] // 2
    axis = mrope_axis_map(mrope_section, interleaved).to(positions.device)
    pos = positions[axis, :].T  # [T, D/2]: the position of the axis each frequency uses
    freq_idx = torch.arange(half, device=positions.device).expand_as(pos)
    cos = cos_sin_cache[pos, freq_idx]
    sin = cos_sin_cache[pos, freq_idx + half]
    return cos, sin


def apply_mrope_(q, k, positions, cos_sin_cache, mrope_section, interleaved: bool) -> None:
    """In-place 3D MRoPE on q [T, Hq, D], k [T, Hk, D]; see mrope_cos_sin for the other inputs."""
    cos, sin = mrope_cos_sin(positions, cos_sin_cache, mrope_section, interleaved)
    apply_rotary_(q, k, cos, sin)


def rope_cos_sin_cache(head_dim: int, max_pos: int, theta: float, device=None) -> torch.Tensor:
    """[max_pos, head_dim] float32 = [cos | sin] of pos * inv_freq, the layout apply_mrope_ reads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(max_pos, device=device, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def store_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write k, v [T, Hk, D] into kv_cache [num_blocks, 2, block_size, Hk, D] at flat slots [T] (block*bs+off).

    A negative slot skips its token (padding).
    """
    keep = slot_mapping >= 0
    slots, k, v = slot_mapping[keep], k[keep], v[keep]
    block_size = kv_cache.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[blocks, 0, offsets] = k.to(kv_cache.dtype)
    kv_cache[blocks, 1, offsets] = v.to(kv_cache.dtype)


# ---- seeded sampling: Gumbel-max with MurmurHash3 noise ----------------------------------------------------------

_M32 = 0xFFFFFFFF


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix32(h: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
    k = (word * 0xCC9E2D51) & _M32
    k = _rotl32(k, 15)
    k = (k * 0x1B873593) & _M32
    h = h ^ k
    h = _rotl32(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def murmur3_32(seed: torch.Tensor, words: list[torch.Tensor]) -> torch.Tensor:
    """MurmurHash3 x86_32 of a sequence of 32-bit words (int64 tensors holding uint32 values), broadcasting."""
    h = seed & _M32
    for w in words:
        h = _mix32(h, w & _M32)
    h = h ^ (4 * len(words))
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0,1) noise [B, V] from hash(seed, position, token id): independent of the batch around a row."""
    tok = torch.arange(vocab, dtype=torch.int64, device=seeds.device)[None, :]
    h = murmur3_32(seeds[:, None].to(torch.int64), [positions[:, None].to(torch.int64), tok])
    u = (h.to(torch.float64) + 0.5) / 4294967296.0  # in (0, 1)
    return -torch.log(-torch.log(u)).to(torch.float32)


def gumbel_sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """argmax(logits + Gumbel noise) per row. logits [B, V] float32 already divided by temperature and masked."""
    return torch.argmax(logits.float() + gumbel_noise(seeds, positions, logits.shape[-1]), dim=-1)


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (float32) -> top-k -> optional renormalisation. router_logits: [T, E] -> (weights [T, k] float32,
    expert ids [T, k] int32)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids.to(torch.int32)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """The sparse MoE block as a loop over experts. x: [T, H]; w13: [E, 2I, H] = [gate | up] rows; w2: [E, H, I];
    topk_weights / topk_ids: [T, k]. Each pick: silu(x @ gate.T) * (x @ up.T) @ w2[e].T * weight, summed over k."""
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    inter = w2.shape[2]
    for e in torch.unique(topk_ids).tolist():
        tok, pick = torch.nonzero(topk_ids == e, as_tuple=True)
        h = x[tok] @ w13[e].t()
        act = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]) @ w2[e].t()
        out.index_add_(0, tok, act.float() * topk_weights[tok, pick, None].float())
    return out.to(x.dtype)


def qk_norm_mrope(q, k, q_weight, k_weight, eps: float, positions, cos_sin_cache, mrope_section, interleaved: bool):
    """Per-head RMSNorm of q [T, Hq, D] and k [T, Hk, D] (weights [D]), then MRoPE; returns new (q, k)."""
    qn, kn = rmsnorm(q, q_weight, eps).contiguous(), rmsnorm(k, k_weight, eps).contiguous()
    apply_mrope_(qn, kn, positions, cos_sin_cache, mrope_section, interleaved)
    return qn, kn


def fused_add_rmsnorm_router(x, residual, weight, eps: float, router_weight):
    """(rmsnorm(x + residual), x + residual, rmsnorm(x + residual) @ router_weight.T): the MoE block's input."""
    normed, summed = fused_add_rmsnorm(x, residual, weight, eps)
    return normed, summed, torch.nn.functional.linear(normed, router_weight)
