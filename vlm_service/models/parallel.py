"""Megatron-style tensor parallelism for the text decoder, as a thin layer over layers.py's modules.

A model built with `tp=None` (or a TensorParallel of size 1) is exactly the single-device model: the factories
below return the plain nn.Linear / MergedLinear / nn.Embedding then, so nothing is added to the TP=1 hot path.
With size N > 1 each rank holds:
- q/k/v and gate/up: column slices (its heads / its share of the intermediate dim), no communication;
- o_proj and down_proj: row slices of the input dim, then ONE all-reduce of the [T, hidden] output each;
- embed_tokens and lm_head: a contiguous vocab slice of ceil(V/N) rows (the last one zero-padded); the embedding
  all-reduces, the head gathers the logit slices onto rank 0.
KV heads: with Hk >= N each rank holds Hk/N of them; with Hk < N (GQA) rank r holds the one KV head its q heads
read, kv head r // (N / Hk), replicated on N/Hk ranks.

A shard's `spec.num_heads` / `spec.num_kv_heads` are the rank's own (its KV pool is sized for them).

Every sharded parameter records where its slice sits in the checkpoint tensor (`tp_slices`: canonical name ->
(dim, start, stop, rows): checkpoint rows [start, stop) along dim, into a parameter of `rows` there), so the
loader reads that slice straight from safetensors (loader.py, safe_open get_slice). A slice that is not one range
is an object with read(part, name) instead (the MoE experts' fused tensors: moe_parallel.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlm_service.errors import ModelLoadError
from vlm_service.models.linear import MergedLinear


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the tensor-parallel group; `group` is a torch.distributed ProcessGroup (NCCL on GPU,
    gloo on CPU) for the collectives of the forward."""

    rank: int
    size: int
    group: Any = None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the ranks, in place (x: any shape); returns x."""
        torch.distributed.all_reduce(x, group=self.group)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's x [..., n] along the last dim onto rank 0 ([..., N*n]); None on other ranks."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        torch.distributed.gather(x, parts, dst=self._global(0), group=self.group)
        return torch.cat(parts, dim=-1) if parts is not None else None

    def all_gather_rows(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Every rank's x [counts[rank], ...] concatenated in rank order on every rank (rows may differ per rank)."""
        n = max(counts)
        padded = x.new_zeros((n, *x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def _global(self, rank: int) -> int:
        return torch.distributed.get_global_rank(self.group, rank) if self.group is not None else rank


def active(tp: TensorParallel | None) -> bool:
    """True when the model is really split (size > 1)."""
    return tp is not None and tp.size > 1


def split(total: int, tp: TensorParallel, what: str) -> int:
    """total / size, or ModelLoadError naming the dimension that does not divide."""
    if total % tp.size:
        raise ModelLoadError(f"{what} = {total} does not divide by --tensor-parallel-size {tp.size}")
    return total // tp.size


@dataclass(frozen=True)
class HeadShard:
    """The attention heads of one rank: q heads [q_start, q_start + num_heads), kv heads likewise."""

    num_heads: int
    num_kv_heads: int
    q_start: int
    kv_start: int


def head_shard(num_heads: int, num_kv_heads: int, tp: TensorParallel | None) -> HeadShard:
    """Which q and kv heads this rank holds (see the module docstring for Hk < N)."""
    if not active(tp):
        return HeadShard(num_heads, num_kv_heads, 0, 0)
    q = split(num_heads, tp, "num_attention_heads")
    if num_kv_heads >= tp.size:
        kv = split(num_kv_heads, tp, "num_key_value_heads")
        return HeadShard(q, kv, tp.rank * q, tp.rank * kv)
    if tp.size % num_kv_heads:
        raise ModelLoadError(f"--tensor-parallel-size {tp.size} is not a multiple of num_key_value_heads "
                             f"{num_kv_heads} (KV heads are replicated over equal groups of ranks)")
    return HeadShard(q, 1, tp.rank * q, tp.rank // (tp.size // num_kv_heads))


def qkv_parts(shard: HeadShard, head_dim: int) -> tuple[dict[str, int], dict[str, int]]:
    """MergedLinear parts {q_proj, k_proj, v_proj: rows} and each part's start row in the checkpoint tensor."""
    q, kv = shard.num_heads * head_dim, shard.num_kv_heads * head_dim
    starts = {"q_proj": shard.q_start * head_dim, "k_proj": shard.kv_start * head_dim,
              "v_proj": shard.kv_start * head_dim}
    return {"q_proj": q, "k_proj": kv, "v_proj": kv}, starts


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_local @ W[:, slice].T) + b: the input dim is split (o_proj, down_proj); weight
    [out, in / N]; the bias (full) is added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel):
        local = split(in_features, tp, "the input dim of a row-parallel linear")
        super().__init__(local, out_features, bias=bias)
        self.tp = tp
        self.tp_slices = {"weight": (1, tp.rank * local, (tp.rank + 1) * local, local)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(nn.functional.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y


def row_linear(in_features: int, out_features: int, bias: bool, tp: TensorParallel | None) -> nn.Linear:
    """nn.Linear at TP=1, else RowParallelLinear."""
    if not active(tp):
        return nn.Linear(in_features, out_features, bias=bias)
    return RowParallelLinear(in_features, out_features, bias, tp)


def vocab_rows(vocab: int, tp: TensorParallel) -> tuple[int, int]:
    """(rows per rank = ceil(V / N), this rank's first vocab id)."""
    per = -(-vocab // tp.size)
    return per, tp.rank * per


class VocabParallelEmbedding(nn.Embedding):
    """Rows [start, start + ceil(V/N)) of the embedding; tokens outside give zeros, then one all-reduce.
    Rows past V (padding of the last rank) are zero and never read."""

    def __init__(self, vocab: int, hidden: int, tp: TensorParallel):
        per, start = vocab_rows(vocab, tp)
        super().__init__(per, hidden)
        self.tp, self.start, self.vocab = tp, start, vocab
        self.tp_slices = {"weight": (0, start, min(start + per, vocab), per)}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        h = nn.functional.embedding(local.masked_fill(outside, 0), self.weight)  # [T, hidden]
        return self.tp.all_reduce(h.masked_fill_(outside[:, None], 0.0))


def embedding(vocab: int, hidden: int, tp: TensorParallel | None) -> nn.Embedding:
    """nn.Embedding at TP=1, else VocabParallelEmbedding."""
    return VocabParallelEmbedding(vocab, hidden, tp) if active(tp) else nn.Embedding(vocab, hidden)


class ParallelLMHead(nn.Linear):
    """lm_head rows of this rank's vocab slice, weight [ceil(V/N), hidden] (the last rank's tail zero-padded)."""

    def __init__(self, hidden: int, vocab: int, tp: TensorParallel):
        per, start = vocab_rows(vocab, tp)
        super().__init__(hidden, per, bias=False)
        self.tp_slices = {"weight": (0, start, min(start + per, vocab), per)}


def lm_head(hidden: int, vocab: int, tp: TensorParallel | None) -> nn.Linear:
    return ParallelLMHead(hidden, vocab, tp) if active(tp) else nn.Linear(hidden, vocab, bias=False)


def gather_logits(local: torch.Tensor, vocab: int, tp: TensorParallel) -> torch.Tensor | None:
    """Logit slices [B, ceil(V/N)] of every rank -> [B, V] on rank 0 (padding dropped); None elsewhere."""
    full = tp.gather_last_dim(local)
    return full[:, :vocab] if full is not None else None


def shard_slices(root: nn.Module) -> dict[str, Any]:
    """Canonical tensor name -> (dim, start, stop, rows) of the checkpoint slice it takes, or a module's own slice
    object (with read(part, name)); unsharded names are absent."""
    out: dict[str, Any] = {}
    for prefix, mod in root.named_modules():
        if isinstance(mod, MergedLinear) and mod.starts:
            parent = prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""
            for part, size in mod.parts.items():
                start = mod.starts[part]
                out[f"{parent}{part}.weight"] = (0, start, start + size, size)
                if mod.bias is not None:
                    out[f"{parent}{part}.bias"] = (0, start, start + size, size)
        for name, sl in getattr(mod, "tp_slices", {}).items():
            out[f"{prefix}.{name}" if prefix else name] = sl
    return out


def fit_slice(tensor: torch.Tensor, dest_rows: int, dim: int) -> torch.Tensor:
    """A vocab slice shorter than the rank's rows (the last rank) zero-padded to dest_rows along `dim`."""
    short = dest_rows - tensor.shape[dim]
    if short <= 0:
        return tensor
    pad = list(tensor.shape)
    pad[dim] = short
    return torch.cat([tensor, tensor.new_zeros(pad)], dim=dim)
