"""Qwen3-VL-MoE (e.g. Qwen3-VL-30B-A3B): dense Qwen3-VL (qwen3_vl.py: vision tower, deepstack, attention, MRoPE)
whose text MLPs are sparse mixture-of-experts blocks, except the layers the config keeps dense.

A sparse block: router logits = gate(x) [T, E] -> softmax -> top-k (renormalised when norm_topk_prob) -> the k
experts' SiLU-gated MLPs weighted and summed; all of it in one kernels.moe.fused_moe call, which reads the experts
stacked: gate_up_proj w13 [E, 2I, H] (gate rows, then up rows) and down_proj w2 [E, H, I] (transformers-5's
parameter names and layout). Layer l is sparse when l is not in mlp_only_layers, num_experts > 0 and
(l + 1) % decoder_sparse_step == 0 (transformers' rule); dense layers use intermediate_size.

Checkpoint layouts of the experts, whichever a checkpoint holds (see load_weights):
- per expert: `mlp.experts.{e}.gate_proj.weight` [I, H], `.up_proj.weight` [I, H], `.down_proj.weight` [H, I];
- fused as transformers-5 holds and saves them: `mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj`
  [E, H, I];
- fused, transposed, as the hub checkpoints hold them (written by transformers 4.57): [E, H, 2I] and [E, I, H].
  As transformers' conversion mapping does, a tensor already in our shape is taken as is (so a square one is never
  transposed).

Tensor parallelism (moe_parallel.py): every rank holds all experts, each cut along its intermediate dim (gate/up
column-parallel, down row-parallel), the router whole; one all-reduce of each sparse block's output. Dense layers,
attention, embedding and lm_head are sharded as in the dense model (models/parallel.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from kernels.moe import fused_moe
from kernels.norm_router import fused_add_rmsnorm_router
from vlm_service.errors import ModelLoadError
from vlm_service.models.layers import GatedMLP, MLPFactory
from vlm_service.models.moe_parallel import ExpertShard, expert_shard, expert_slices
from vlm_service.models.parallel import TensorParallel, active
from vlm_service.models.qwen3_vl import Qwen3VLForConditionalGeneration

_FUSED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def num_experts(text: dict) -> int:
    """transformers-5 writes num_experts as num_local_experts (its attribute map); hub configs say num_experts."""
    return int(text.get("num_experts", text.get("num_local_experts", 0)) or 0)


def is_sparse_layer(text: dict, layer: int) -> bool:
    """transformers' rule for which decoder layers get the MoE block."""
    step = int(text.get("decoder_sparse_step", 1) or 1)
    return (layer not in (text.get("mlp_only_layers") or []) and num_experts(text) > 0
            and (layer + 1) % step == 0)


class StackedExperts(nn.Module):
    """All experts of one layer as two stacked parameters: gate_up_proj [E, 2I, H], down_proj [E, H, I].
    Under tensor parallelism I is this rank's slice of moe_intermediate_size (`shard`), and `tp_slices` tells the
    loader which part of each checkpoint tensor to read (moe_parallel.py)."""

    def __init__(self, experts: int, hidden: int, inter: int, shard: ExpertShard | None = None):
        super().__init__()
        shard = shard or ExpertShard(inter, inter, 0)
        self.num_experts, self.hidden, self.inter = experts, hidden, shard.local
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * shard.local, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, shard.local))
        if shard.local != inter:
            self.tp_slices = expert_slices(experts, hidden, shard)

    def checkpoint_slots(self, prefix: str) -> dict[str, torch.Tensor]:
        """Per-expert canonical names -> views of the stacks (layers.weight_slots): every layout is copied through
        these, one expert matrix at a time, so loading never holds a second copy of a stack."""
        slots, inter = {}, self.inter
        for e in range(self.num_experts):
            slots[f"{prefix}.{e}.gate_proj.weight"] = self.gate_up_proj[e, :inter]
            slots[f"{prefix}.{e}.up_proj.weight"] = self.gate_up_proj[e, inter:]
            slots[f"{prefix}.{e}.down_proj.weight"] = self.down_proj[e]
        return slots

    def split_fused(self, prefix: str, kind: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """A fused checkpoint tensor (kind "gate_up_proj" or "down_proj", either orientation) -> per-expert
        (name, view) pairs for checkpoint_slots; ModelLoadError naming the tensor for any other shape."""
        e, h, i = self.num_experts, self.hidden, self.inter
        ours = (e, 2 * i, h) if kind == "gate_up_proj" else (e, h, i)
        hub = (ours[0], ours[2], ours[1])
        shape = tuple(tensor.shape)
        if shape not in (ours, hub):
            raise ModelLoadError(f"tensor {prefix + '.' + kind!r} has shape {shape}, expected {ours} "
                                 f"(or the transposed {hub})")
        t = tensor if shape == ours else tensor.transpose(1, 2)  # a view: [E, 2I, H] / [E, H, I]
        for x in range(e):
            if kind == "gate_up_proj":
                yield f"{prefix}.{x}.gate_proj.weight", t[x, :i]
                yield f"{prefix}.{x}.up_proj.weight", t[x, i:]
            else:
                yield f"{prefix}.{x}.down_proj.weight", t[x]


class SparseMoeBlock(nn.Module):
    """Router + stacked experts; forward x [T, H] -> [T, H]. No host sync: routing happens inside fused_moe.
    With `tp` (size > 1) the experts hold this rank's intermediate slice and the output is all-reduced."""

    def __init__(self, text: dict, tp: TensorParallel | None = None):
        super().__init__()
        self.tp = tp if active(tp) else None
        hidden = text["hidden_size"]
        self.top_k = int(text["num_experts_per_tok"])
        # transformers' router always renormalises (its config has no norm_topk_prob); the hub configs say true
        self.renormalize = bool(text.get("norm_topk_prob", True))
        self.gate = nn.Linear(hidden, num_experts(text), bias=False)
        inter = int(text["moe_intermediate_size"])
        self.experts = StackedExperts(num_experts(text), hidden, inter, expert_shard(inter, tp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)  # [T, E] in the model dtype (replicated: every rank routes alike); softmax in fp32
        return self.routed(x, logits)

    def forward_after_norm(self, h: torch.Tensor, residual: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """DecoderLayer's hook: (this block's output, the new residual) of norm.add(h, residual) fed to forward,
        with the add + RMSNorm and the router's linear in one launch for decode batches (kernels.norm_router)."""
        x, residual, logits = fused_add_rmsnorm_router(h, residual, norm.weight, norm.eps, self.gate.weight)
        return self.routed(x, logits), residual

    def routed(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """x [T, H], router logits [T, E] -> the experts' weighted sum [T, H]; under tensor parallelism each rank
        holds a share of every expert's intermediate dim, so the shares are summed here (both entry points)."""
        y = fused_moe(x, logits, self.experts.gate_up_proj, self.experts.down_proj, self.top_k, self.renormalize)
        return self.tp.all_reduce(y) if self.tp is not None else y  # [T, H]


def moe_text_mlp(text: dict, layer: int, tp: TensorParallel | None = None) -> nn.Module:
    """The MLP of decoder layer `layer`: a SparseMoeBlock, or a dense GatedMLP where the config keeps one."""
    if is_sparse_layer(text, layer):
        return SparseMoeBlock(text, tp)
    return GatedMLP(text["hidden_size"], text["intermediate_size"], tp=tp)


class Qwen3VLMoeForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """Qwen3-VL-MoE implementing the VLModel protocol (models/common.py); see the module docstring."""

    ARCH = "Qwen3VLMoeForConditionalGeneration"

    def text_mlp(self, text: dict) -> MLPFactory | None:
        """Per layer: a sparse block or a dense GatedMLP, sharded like the rest when self.tp is set (the dense
        __init__ sets it before building the layers)."""
        return functools.partial(moe_text_mlp, tp=self.tp)

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """As the dense model's, with fused expert tensors split into per-expert views on the way in."""
        super().load_weights(self._split_fused_experts(named))

    def _split_fused_experts(self, named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named:
            experts = self._experts_of(name)
            if experts is None:
                yield name, tensor  # not a fused expert tensor of ours: load_into judges it
            else:
                prefix, kind = name.rsplit(".", 1)
                yield from experts.split_fused(prefix, kind, tensor)

    def _experts_of(self, name: str) -> StackedExperts | None:
        if not name.endswith(_FUSED):
            return None
        try:
            module = self.get_submodule(name.rsplit(".", 1)[0])
        except AttributeError:
            return None
        return module if isinstance(module, StackedExperts) else None
