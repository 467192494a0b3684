"""Small building blocks both model files use: norms that call kernels/, a fused linear that loads from several
canonical tensors (MergedLinear, in models/linear.py), and the weight-loading walk that maps canonical names onto
our parameters.

Modules here are built on the `meta` device and materialized once (see `materialize`), so a 8B model never spends
time on a throwaway random init before its checkpoint is copied in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

import kernels
from kernels.add_norm import fused_add_layernorm
from vlm_service.errors import ModelLoadError
from vlm_service.models.common import AttentionContext, MultimodalEmbeds
from vlm_service.models.linear import MergedLinear  # the model files import it from here
from vlm_service.models.parallel import TensorParallel, active, embedding, gather_logits, row_linear, split


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; `add` fuses the residual add (returns (normed, new_residual))."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rmsnorm(x, self.weight, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.fused_add_rmsnorm(x, residual, self.weight, self.eps)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias over the last dim (the ViT's norm); `add` fuses the residual add."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.layernorm(x, self.weight, self.bias, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual add fused in: returns (layernorm(x + residual), x + residual), as RMSNorm.add."""
        return fused_add_layernorm(x, residual, self.weight, self.bias, self.eps)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), gate|up fused: both text decoders (no biases) and Qwen2.5-VL's vision blocks.
    With `tp` (size > 1) gate/up are column slices of the intermediate dim and down is row-parallel."""

    def __init__(self, hidden: int, inter: int, bias: bool = False, tp: TensorParallel | None = None):
        super().__init__()
        local = split(inter, tp, "intermediate_size") if active(tp) else inter
        starts = {"gate_proj": tp.rank * local, "up_proj": tp.rank * local} if active(tp) else None
        self.gate_up_proj = MergedLinear(hidden, {"gate_proj": local, "up_proj": local}, bias=bias, starts=starts)
        self.down_proj = row_linear(inter, hidden, bias, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


# (text config, layer index) -> that layer's MLP module ([T, hidden] -> [T, hidden]); None = GatedMLP everywhere
MLPFactory = Callable[[dict, int], nn.Module]



class DecoderLayer(nn.Module):
    """Pre-norm block around the model's attention class and MLP (default GatedMLP; `mlp` picks one per layer, e.g.
    Qwen3-VL-MoE's sparse blocks); the residual stream travels separately so each add fuses into the next norm."""

    def __init__(self, cfg: dict, layer: int, attention: type[nn.Module], tp: TensorParallel | None = None, *,
                 mlp: MLPFactory | None = None):
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        # attention classes take `tp` only when the model is split (a class without it still serves TP=1)
        self.self_attn = attention(cfg, layer, tp=tp) if active(tp) else attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.mlp = (mlp(cfg, layer) if mlp is not None
                    else GatedMLP(cfg["hidden_size"], cfg["intermediate_size"], tp=tp))

    def forward(self, h, residual, positions, ctx, rope):
        if residual is None:
            residual, x = h, self.input_layernorm(h)
        else:
            x, residual = self.input_layernorm.add(h, residual)
        h = self.self_attn(x, positions, ctx, rope)
        after_norm = getattr(self.mlp, "forward_after_norm", None)
        if after_norm is not None:  # the MLP fuses this norm into its first op (Qwen3-VL-MoE: the router)
            return after_norm(h, residual, self.post_attention_layernorm)
        x, residual = self.post_attention_layernorm.add(h, residual)
        return self.mlp(x), residual


class TextModel(nn.Module):
    """Embedding, decoder layers, final norm. Image embeddings replace the image-pad rows; deepstack features
    (Qwen3-VL) are added after the first layers."""

    def __init__(self, cfg: dict, attention: type[nn.Module], tp: TensorParallel | None = None, *,
                 mlp: MLPFactory | None = None):
        super().__init__()
        self.embed_tokens = embedding(cfg["vocab_size"], cfg["hidden_size"], tp)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, attention, tp, mlp=mlp)
                                    for i in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6))

    def embed(self, input_ids: torch.Tensor, mm: MultimodalEmbeds | None) -> torch.Tensor:
        """The decoder's input [T, hidden]: token embeddings, visual embeddings at the image-pad rows."""
        h = self.embed_tokens(input_ids)  # [T, hidden]
        if mm is not None and mm.embeds.numel():
            h[mm.where] = mm.embeds.to(h.dtype)  # image embeddings into the image-pad positions, in order
        return h

    def forward(self, input_ids, positions, ctx: AttentionContext, rope, mm: MultimodalEmbeds | None, *,
                inputs_embeds: torch.Tensor | None = None,
                dense_deepstack: list[torch.Tensor] | None = None) -> torch.Tensor:
        """inputs_embeds [T, hidden] replaces embed(input_ids, mm); dense_deepstack (a list of [T, hidden], zero
        but at the visual rows) replaces mm.deepstack: static shapes for CUDA graphs (engine/prefill_graphs.py),
        the same values (adding a zero row changes nothing)."""
        h = self.embed(input_ids, mm) if inputs_embeds is None else inputs_embeds
        deepstack = (mm.deepstack or []) if mm is not None else []
        residual = None
        for i, layer in enumerate(self.layers):
            h, residual = layer(h, residual, positions, ctx, rope)
            if dense_deepstack is not None:
                if i < len(dense_deepstack):
                    h = h + dense_deepstack[i]
            elif i < len(deepstack):
                # the residual stream is h + residual; adding to h adds to the stream
                h[mm.where] += deepstack[i].to(h.dtype)
        return self.norm.add(h, residual)[0]


class VisionLanguageModel(nn.Module):
    """What both model classes share: weight loading, the text forward and the (possibly tied) head. Subclasses
    build `self.model` (visual + language_model), `self.rope`, `self.tied` and optionally `self.lm_head`; a
    tensor-parallel shard also sets `self.tp` (models/parallel.py)."""

    tp: TensorParallel | None = None

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy canonical (name, tensor) pairs in; ModelLoadError names a missing/unexpected/mis-shaped tensor.
        With tied embeddings lm_head.weight is optional (embed_tokens serves as the head)."""
        load_into(self, named, ignore=("lm_head.weight",) if self.tied else ())
        self.weights_loaded()

    def weights_loaded(self) -> None:
        """Hook run after the weights are in."""

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext,
                mm: MultimodalEmbeds | None = None, *, inputs_embeds: torch.Tensor | None = None,
                dense_deepstack: list[torch.Tensor] | None = None) -> torch.Tensor:
        """input_ids [T], positions [3, T] -> hidden [T, hidden] after the final norm (the keyword inputs: see
        TextModel.forward)."""
        return self.model.language_model(input_ids, positions, ctx, self.rope, mm, inputs_embeds=inputs_embeds,
                                          dense_deepstack=dense_deepstack)

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, mm: MultimodalEmbeds | None = None) -> torch.Tensor:
        """The text decoder's input rows [T, hidden] (TextModel.embed)."""
        return self.model.language_model.embed(input_ids, mm)

    def deepstack_layers(self) -> int:
        """How many decoder layers get deepstack features added (Qwen3-VL's deepstack mergers; 0 for Qwen2.5)."""
        return len(getattr(self.model.visual, "deepstack_indexes", None) or [])

    @torch.no_grad()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> logits [B, vocab] float32. A tensor-parallel shard gathers the vocab slices onto
        rank 0; the other ranks get back their own slice [B, ceil(vocab / N)] (unused: only rank 0 samples)."""
        weight = self.model.language_model.embed_tokens.weight if self.tied else self.lm_head.weight
        logits = nn.functional.linear(hidden, weight).float()
        if self.tp is not None:
            full = gather_logits(logits, self.spec.vocab_size, self.tp)
            return full if full is not None else logits
        return logits


def materialize(module: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Turn a module built on `meta` into uninitialized storage of `dtype` on `device` (weights come later)."""
    return module.to(dtype).to_empty(device=device)


def weight_slots(root: nn.Module, skip: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Every canonical tensor name the checkpoint must provide -> the tensor (or view) it is copied into.

    A parameter's own name is canonical, except inside MergedLinear, which expands to its parts' names, and a
    module with `checkpoint_slots(prefix)` (e.g. stacked MoE experts), which names its own views.
    Names in `skip` (e.g. a tied lm_head) are left out.
    """
    slots: dict[str, torch.Tensor] = {}
    for prefix, mod in root.named_modules():
        parent = prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""
        if isinstance(mod, MergedLinear):
            slots.update(mod.slots(parent))
            continue
        if hasattr(mod, "checkpoint_slots"):
            slots.update(mod.checkpoint_slots(prefix))
            continue
        for name, param in mod.named_parameters(recurse=False):
            slots[f"{prefix}.{name}" if prefix else name] = param
    for name in skip:
        slots.pop(name, None)
    return slots


@torch.no_grad()
def load_into(root: nn.Module, named: Iterable[tuple[str, torch.Tensor]], skip: Iterable[str] = (),
              ignore: Iterable[str] = ()) -> None:
    """Copy canonical (name, tensor) pairs into `root`, casting to its dtype and device.

    Raises ModelLoadError naming the tensor for an unexpected name, a shape mismatch, a duplicate, or a tensor
    the checkpoint never provided. Names in `ignore` are accepted and dropped (e.g. lm_head of a tied model).
    """
    slots, ignore = weight_slots(root, skip), set(ignore)
    seen: set[str] = set()
    for name, tensor in named:
        if name in ignore:
            continue
        dest = slots.get(name)
        if dest is None:
            raise ModelLoadError(f"unexpected tensor {name!r} {tuple(tensor.shape)} (not a weight of this model)")
        if name in seen:
            raise ModelLoadError(f"tensor {name!r} appears twice in the checkpoint")
        if tuple(tensor.shape) != tuple(dest.shape):
            raise ModelLoadError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
        dest.copy_(tensor)
        seen.add(name)
    missing = sorted(set(slots) - seen)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelLoadError(f"missing tensor {missing[0]!r}{more} in the checkpoint")


@torch.no_grad()
def init_random_(root: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Random weights for `random:` presets: normal(0, std) matrices, norms at one, biases at zero."""
    gen = torch.Generator(device=next(root.parameters()).device).manual_seed(seed)
    for name, param in root.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.dim() == 1:
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)


@torch.no_grad()
def seeded_weights_(root: nn.Module, seed: int, matrix: float = 0.05, norm: float = 0.05, bias: float = 0.02) -> None:
    """Every weight from one CPU generator in parameter order (so the values do not depend on the device or on
    transformers' init order): matrices N(0, matrix), 1-D weights 1 + N(0, norm), biases N(0, bias). The demo
    checkpoints and the tests' tiny models use it."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in root.named_parameters():
        noise = torch.randn(p.shape, generator=gen).to(p)
        if name.endswith("bias"):
            p.copy_(bias * noise)
        elif p.dim() == 1:
            p.copy_(1.0 + norm * noise)
        else:
            p.copy_(matrix * noise)
