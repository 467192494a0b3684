"""Per-segment attention written out in float64: the oracle of the backend tests."""

import torch

from vit_backends.shapes import cu_seqlens


def reference_attention(q, k, v, cu):
    """softmax(q k^T / sqrt(D)) v per segment; q, k, v [T, H, D] -> [T, H, D] in float64."""
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].double().transpose(0, 1) for t in (q, k, v))  # [H, L, D]
        scores = qs @ ks.transpose(1, 2) / q.shape[-1] ** 0.5  # [H, L, L]
        out[start:end] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


def random_qkv(lengths, heads, dim, dtype=torch.float32, device="cpu", seed=0):
    """Packed q, k, v [T, H, D], cu_seqlens and max_seqlen for segments of the given lengths."""
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = sum(lengths)
    q, k, v = (torch.randn(tokens, heads, dim, generator=gen, device=device).to(dtype) for _ in range(3))
    return q, k, v, cu_seqlens(lengths, device), max(lengths)
