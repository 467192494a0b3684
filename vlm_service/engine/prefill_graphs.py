"""Piecewise CUDA graphs for prefill and mixed steps of up to max_tokens tokens (padded to a size bucket).

A prefill step's host time is issuing ~1300 torch ops; its attention (FlashInfer's paged prefill, planned per step)
cannot live in a graph whose shapes are fixed. So the text forward is captured as a chain of graphs cut at every
attention call: piece 0 runs up to layer 0's attention, piece l+1 from layer l's attention output to layer l+1's.
Per step: eager input copies, piece 0, then per layer the attention on the real rows and the next piece.

Static inputs, per bucket size B (views of buffers of the largest size): inputs_embeds [B, hidden] (token
embeddings with the visual rows scattered in, computed eagerly), positions [3, B], slot_mapping [B] (-1 on padding
rows: the KV stores skip them), dense deepstack [B, hidden] buffers (zero but at this step's visual rows). At a cut
the piece copies q into a static [B, Hq, D] buffer and reads the attention output from another; the attention
between pieces runs over the first n (real) rows only, planned with the real layout.

`eager=True` runs the same path without any CUDA call (the pieces are simply executed, the attention runs at each
cut): the CPU tests check it against the plain forward. All graphs share one memory pool (largest bucket first).
"""

from __future__ import annotations

import logging
import time

import torch

import kernels

log = logging.getLogger(__name__)


def prefill_graph_sizes(max_tokens: int) -> list[int]:
    """The padded token counts captured: 128, 256, 384, 512, 768, 1024, then steps of 512; max_tokens last."""
    base = [128, 256, 384, 512, 768, 1024]
    sizes = [s for s in base if s < max_tokens] + list(range(1536, max_tokens, 512))
    return sorted(set(sizes + [max_tokens])) if max_tokens > 0 else []


def supports_prefill_graphs(model) -> bool:
    """The model takes static inputs (VisionLanguageModel.embed / forward(inputs_embeds=, dense_deepstack=)) and
    is not split over ranks (under tensor parallelism every rank would have to take the same path; not done)."""
    return (callable(getattr(model, "embed", None)) and callable(getattr(model, "deepstack_layers", None))
            and getattr(model, "tp", None) is None)


def make_prefill_graphs(runner) -> "PrefillGraphs | None":
    """The runner's prefill graphs (CUDA, with cuda_graphs on), or None: off, unsupported, or the capture failed
    (a capture failure is logged and the prefill steps run eagerly, as DecodeGraphs')."""
    max_tokens = runner.cfg.prefill_graph_max_tokens
    if max_tokens <= 0:
        return None
    if not supports_prefill_graphs(runner.model):
        log.info("prefill CUDA graphs off: the model takes no static inputs or is split over ranks")
        return None
    try:
        return PrefillGraphs(runner, max_tokens)
    except Exception:
        log.exception("prefill CUDA graph capture failed; prefilling eagerly")
        return None


class _CutContext:
    """The AttentionContext of the piecewise forward: k/v stores into the cache (static slots), q into the static
    q buffer, then `cut(layer)`; the attention output is read from the static output buffer."""

    def __init__(self, owner: "PrefillGraphs", bs: int, cut):
        self.caches, self.slots, self.cut = owner.runner.kv_caches, owner.slots[:bs], cut
        self.q, self.out = owner.q[:bs], owner.att[:bs]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kernels.store_kv(k, v, self.caches[layer], self.slots)
        return self.attend_stored(layer, q)

    def store_target(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.caches[layer], self.slots

    def attend_stored(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        self.q.copy_(q)
        self.cut(layer)
        return self.out


class PrefillGraphs:
    def __init__(self, runner, max_tokens: int, *, eager: bool = False):
        self.runner, self.model, self.eager = runner, runner.model, eager
        self.sizes = prefill_graph_sizes(max_tokens)
        s, dev, dt = runner.spec, runner.device, runner.dtype
        big = self.sizes[-1]
        self.embeds = torch.zeros(big, s.hidden_size, dtype=dt, device=dev)
        self.pos = torch.zeros(3, big, dtype=torch.long, device=dev)
        self.slots = torch.full((big,), -1, dtype=torch.long, device=dev)
        self.deep = [torch.zeros(big, s.hidden_size, dtype=dt, device=dev)
                     for _ in range(self.model.deepstack_layers())]
        self.q = torch.zeros(big, s.num_heads, s.head_dim, dtype=dt, device=dev)
        self.att = torch.zeros(big, s.num_heads, s.head_dim, dtype=dt, device=dev)
        self._deep_dirty = False
        self.pieces: dict[int, list] = {}  # bucket -> [piece 0, ..., piece L] (torch.cuda.CUDAGraph)
        self.order: dict[int, list[int]] = {}  # bucket -> the layers of its cuts, in order
        self.outputs: dict[int, torch.Tensor] = {}  # bucket -> the last piece's hidden [B, hidden]
        if not eager:
            self._capture_all()

    def fits(self, num_tokens: int) -> bool:
        return 0 < num_tokens <= self.sizes[-1]

    def bucket(self, num_tokens: int) -> int:
        return next(b for b in self.sizes if b >= num_tokens)

    # ---- capture (CUDA) ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _capture_all(self) -> None:
        t0, (free0, _) = time.monotonic(), torch.cuda.mem_get_info(self.runner.device)
        self._tune_moe()
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.runner.device)
        for bs in reversed(self.sizes):  # largest first, so smaller buckets reuse its pool memory
            self._capture(bs)
        torch.cuda.synchronize(self.runner.device)
        free1, _ = torch.cuda.mem_get_info(self.runner.device)
        log.info("prefill CUDA graphs: %d sizes up to %d tokens, %d pieces each, captured in %.1f s, %.0f MiB",
                 len(self.sizes), self.sizes[-1], len(self.pieces[self.sizes[-1]]), time.monotonic() - t0,
                 (free0 - free1) / 2 ** 20)

    def _tune_moe(self) -> None:
        """Measure the fused-MoE tile configs of every bucket before capture (the tuner cannot time inside a
        capture and would fall back to its defaults); one call per distinct expert shape."""
        from kernels.moe import tune_fused_moe

        seen = set()
        for mod in self.model.modules() if hasattr(self.model, "modules") else ():
            experts, top_k = getattr(mod, "experts", None), getattr(mod, "top_k", None)
            w13, w2 = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
            if top_k is None or not isinstance(w13, torch.Tensor) or not isinstance(w2, torch.Tensor):
                continue
            key = (tuple(w13.shape), tuple(w2.shape), int(top_k))
            if key not in seen:
                seen.add(key)
                tune_fused_moe(w13, w2, int(top_k), self.sizes)

    def _forward(self, bs: int, ctx: _CutContext) -> torch.Tensor:
        return self.model.forward(None, self.pos[:, :bs], ctx, None, inputs_embeds=self.embeds[:bs],
                                  dense_deepstack=[d[:bs] for d in self.deep])

    def _capture(self, bs: int) -> None:
        self.slots.fill_(-1)  # warm-up and capture store nothing (and capture runs no kernel)
        stream = self.stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(bs, _CutContext(self, bs, lambda layer: None))  # compiles kernels, outside any graph
        stream.synchronize()
        pieces, order = [torch.cuda.CUDAGraph()], []

        def cut(layer: int) -> None:
            pieces[-1].capture_end()
            order.append(layer)
            pieces.append(torch.cuda.CUDAGraph())
            pieces[-1].capture_begin(pool=self.pool)

        with torch.cuda.stream(stream):
            pieces[0].capture_begin(pool=self.pool)
            try:
                out = self._forward(bs, _CutContext(self, bs, cut))
            finally:
                pieces[-1].capture_end()
        stream.synchronize()
        torch.cuda.current_stream().wait_stream(stream)
        self.pieces[bs], self.order[bs], self.outputs[bs] = pieces, order, out

    # ---- a step ------------------------------------------------------------------------------------------------
    def _fill(self, ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor, mm, bs: int) -> None:
        n = ids.shape[0]
        self.embeds[:n].copy_(self.model.embed(ids, mm))
        self.embeds[n:bs].zero_()
        self.pos[:, :n].copy_(positions)
        self.pos[:, n:bs].zero_()
        self.slots[:n].copy_(slot_mapping)
        self.slots[n:bs].fill_(-1)
        deep = (mm.deepstack or []) if mm is not None and mm.embeds.numel() else []
        if deep:
            for buf, d in zip(self.deep, deep):
                buf.zero_()
                buf[:n][mm.where] = d.to(buf.dtype)
            self._deep_dirty = True
        elif self._deep_dirty:
            for buf in self.deep:
                buf.zero_()
            self._deep_dirty = False

    def _attend(self, attention, layer: int, n: int) -> None:
        """The attention of `layer` over the real rows: q[:n] -> att[:n] (the step's context writes it there)."""
        attention.attend_stored(layer, self.q[:n], out=self.att[:n])

    def run(self, ids: torch.Tensor, positions: torch.Tensor, layout, mm) -> torch.Tensor:
        """ids [n], positions [3, n], the step's layout and visual embeddings -> hidden [n, hidden]."""
        n = ids.shape[0]
        bs = self.bucket(n)
        self._fill(ids, positions, layout.slot_mapping, mm, bs)
        attention = self.runner._attention(layout)  # planned with the real layout (n rows)
        if self.eager:
            return self._forward(bs, _CutContext(self, bs, lambda layer: self._attend(attention, layer, n)))[:n]
        pieces = self.pieces[bs]
        pieces[0].replay()
        for layer, piece in zip(self.order[bs], pieces[1:]):
            self._attend(attention, layer, n)
            piece.replay()
        return self.outputs[bs][:n]
