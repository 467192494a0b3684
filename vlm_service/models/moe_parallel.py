"""Tensor parallelism for the MoE experts (qwen3_vl_moe.py): each rank holds every expert, cut along the expert's
intermediate dim I (moe_intermediate_size) into N slices of l = I / N.

- gate/up are column-parallel: rank r holds rows [r*l, (r+1)*l) of each expert's gate and of its up, stacked as
  our w13 [E, 2l, H] (gate rows, then up rows), so the fused-MoE op runs unchanged on [E, 2l, H] / [E, H, l];
- down is row-parallel: rank r holds columns [r*l, (r+1)*l) of each expert's down, w2 [E, H, l];
- the router is whole on every rank: every rank picks the same k experts with the same weights for a token, so
  each rank's fused-MoE output is its share of the sum over the experts' intermediate dim, and ONE all-reduce of
  the [T, H] output completes the block (where the dense MLP's down_proj reduces).

The loader reads only a rank's slices (loader._read, safetensors get_slice): per-expert tensors take the plain
(dim, start, stop, rows) tuples of models/parallel.py; a fused tensor takes a FusedExpertSlice, since its rank
slice is two ranges (gate and up) and its orientation (transformers-5's or the hub's transposed one) is only known
from the shape in the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm_service.errors import ModelLoadError
from vlm_service.models.parallel import TensorParallel, active, split


@dataclass(frozen=True)
class ExpertShard:
    """This rank's columns [start, start + local) of each expert's intermediate dim (of `inter` in all)."""

    inter: int
    local: int
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.local


def expert_shard(inter: int, tp: TensorParallel | None) -> ExpertShard:
    """The whole dim at TP=1; else I / N per rank, or ModelLoadError when moe_intermediate_size does not divide."""
    if not active(tp):
        return ExpertShard(inter, inter, 0)
    local = split(inter, tp, "moe_intermediate_size")
    return ExpertShard(inter, local, tp.rank * local)


@dataclass(frozen=True)
class FusedExpertSlice:
    """A rank's slice of a fused expert tensor, read straight from safetensors in our orientation:
    gate_up_proj -> [E, 2l, H] (its gate range, then its up range), down_proj -> [E, H, l].

    The file holds transformers-5's orientation ([E, 2I, H] / [E, H, I]) or the hub's ([E, H, 2I] / [E, I, H]);
    as at TP=1, a tensor already in ours is taken as is (so a square one is never transposed)."""

    kind: str  # "gate_up_proj" or "down_proj"
    experts: int
    hidden: int
    shard: ExpertShard

    def read(self, part, name: str) -> torch.Tensor:
        """part: a safetensors slice handle (get_shape, indexing reads only the bytes asked for)."""
        e, h, i = self.experts, self.hidden, self.shard.inter
        ours = (e, 2 * i, h) if self.kind == "gate_up_proj" else (e, h, i)
        hub = (ours[0], ours[2], ours[1])
        shape = tuple(part.get_shape())
        if shape not in (ours, hub):
            raise ModelLoadError(f"tensor {name!r} has shape {shape}, expected {ours} (or the transposed {hub})")
        transposed = shape != ours
        axis = _I_AXIS[self.kind, transposed]
        out = torch.cat([_take(part, axis, a, b) for a, b in self._ranges()], dim=axis)
        return out.transpose(1, 2) if transposed else out  # a view in our orientation

    def _ranges(self) -> list[tuple[int, int]]:
        s = self.shard
        if self.kind == "down_proj":
            return [(s.start, s.stop)]
        return [(s.start, s.stop), (s.inter + s.start, s.inter + s.stop)]  # gate rows, then up rows


# (kind, file holds the hub's transposed orientation) -> the axis of I (2I for gate_up) in the file's tensor
_I_AXIS = {("gate_up_proj", False): 1, ("gate_up_proj", True): 2, ("down_proj", False): 2, ("down_proj", True): 1}


def _take(part, axis: int, start: int, stop: int) -> torch.Tensor:
    return part[:, start:stop] if axis == 1 else part[:, :, start:stop]


def expert_slices(experts: int, hidden: int, shard: ExpertShard) -> dict:
    """StackedExperts' tp_slices (names relative to the module): both checkpoint layouts of one layer's experts."""
    rows = (0, shard.start, shard.stop, shard.local)  # gate/up [I, H]: rows
    cols = (1, shard.start, shard.stop, shard.local)  # down [H, I]: columns
    out: dict = {kind: FusedExpertSlice(kind, experts, hidden, shard) for kind in ("gate_up_proj", "down_proj")}
    for x in range(experts):
        out.update({f"{x}.gate_proj.weight": rows, f"{x}.up_proj.weight": rows, f"{x}.down_proj.weight": cols})
    return out
