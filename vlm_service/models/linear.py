"""MergedLinear: one matmul for several checkpoint linears, in a module of its own so that both the layers
(models/layers.py) and the tensor-parallel slicing (models/parallel.py, which reads its `starts`) import it
without importing each other.
"""

from __future__ import annotations

import torch
from torch import nn


class MergedLinear(nn.Module):
    """One matmul for several checkpoint linears that read the same input (q/k/v, gate/up).

    weight [sum(sizes), in]; the checkpoint tensors `<parent>.<part>.weight` (and `.bias`) fill row blocks in order.
    forward returns the fused output [..., sum(sizes)]; split it with `sizes`. Parts named with a leading "_" are
    zero padding rows of ours (see VisionMLP.pad_intermediate_): no checkpoint tensor fills them.
    Under tensor parallelism (column-parallel) each part is this rank's rows and `starts` gives the part's first
    row in the checkpoint tensor (models/parallel.py); empty = the whole tensors.
    """

    def __init__(self, in_features: int, parts: dict[str, int], bias: bool, starts: dict[str, int] | None = None):
        super().__init__()
        self.parts = dict(parts)
        self.starts = dict(starts or {})
        self.sizes = list(parts.values())
        self.weight = nn.Parameter(torch.empty(sum(self.sizes), in_features))
        self.bias = nn.Parameter(torch.empty(sum(self.sizes))) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def slots(self, parent: str) -> dict[str, torch.Tensor]:
        """Canonical names -> row views of our weight/bias."""
        out, start = {}, 0
        for part, size in self.parts.items():
            if not part.startswith("_"):
                out[f"{parent}{part}.weight"] = self.weight[start:start + size]
                if self.bias is not None:
                    out[f"{parent}{part}.bias"] = self.bias[start:start + size]
            start += size
        return out
