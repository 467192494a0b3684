"""torch scaled_dot_product_attention, one call per segment: any device, the reference backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vit_backends.base import ViTAttention


class SdpaAttention(ViTAttention):
    name = "sdpa"

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        out = torch.empty_like(q)
        bounds = cu_seqlens.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            # [S, H, D] -> [H, S, D] for sdpa
            qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
            out[start:end] = F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1)
        return out
