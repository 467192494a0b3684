"""CUDA graphs for pure-decode steps (CUDA only; never imported on CPU).

One graph per padded batch size, all reading pooled input buffers (input_ids, positions, slot_mapping) and one
FlashInfer decode wrapper per size built with use_cuda_graph=True (its page-table buffers are fixed, plan() refills
them before each replay). Padding rows write their KV into the runner's scratch block and attend to it alone.
"""

from __future__ import annotations

import torch

from vlm_service.engine.attention import BatchLayout, FlashInferAttention, decode_uses_tensor_cores


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_bs] + list(range(16, max_bs, 16))
    return sorted(set(sizes + [max_bs]))


class DecodeGraphs:
    def __init__(self, runner, max_bs: int):
        import flashinfer

        self.runner = runner
        self.sizes = graph_batch_sizes(max_bs)
        dev = runner.device
        max_pages = runner.scratch_block + 1 + max_bs
        self.ids = torch.zeros(max_bs, dtype=torch.long, device=dev)
        self.pos = torch.zeros(3, max_bs, dtype=torch.long, device=dev)
        self.slots = torch.full((max_bs,), runner.scratch_block * runner.block_size, dtype=torch.long, device=dev)
        self.wrappers, self.graphs, self.outputs = {}, {}, {}
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory pool
            self.wrappers[bs] = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                runner.planner.workspace, "NHD", use_cuda_graph=True,
                use_tensor_cores=decode_uses_tensor_cores(runner.spec),
                paged_kv_indptr_buffer=torch.zeros(bs + 1, dtype=torch.int32, device=dev),
                paged_kv_indices_buffer=torch.zeros(max_pages, dtype=torch.int32, device=dev),
                paged_kv_last_page_len_buffer=torch.zeros(bs, dtype=torch.int32, device=dev))
            self._capture(bs, pool)

    def _pad_layout(self, layout: BatchLayout | None, bs: int) -> BatchLayout:
        n = len(layout.query_lens) if layout else 0
        pad = bs - n
        scratch = self.runner.scratch_block
        return BatchLayout([1] * bs, (layout.context_lens if layout else []) + [1] * pad,
                           (layout.block_tables if layout else []) + [[scratch]] * pad, self.slots[:bs])

    @torch.inference_mode()
    def _capture(self, bs: int, pool) -> None:
        r = self.runner
        r.planner.plan(self._pad_layout(None, bs), wrapper=self.wrappers[bs])
        ctx = FlashInferAttention(r.kv_caches, self.slots[:bs], self.wrappers[bs])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            r.model.forward(self.ids[:bs], self.pos[:, :bs], ctx, None)  # warm-up outside the graph
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.outputs[bs] = r.model.forward(self.ids[:bs], self.pos[:, :bs], ctx, None)
        self.graphs[bs] = graph

    def can_run(self, chunks) -> bool:
        return (len(chunks) <= self.sizes[-1]
                and all(c.num_tokens == 1 and not c.seq.visuals_in(c.start, c.end) for c in chunks))

    def run(self, ids: torch.Tensor, positions: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """ids [n], positions [3, n] -> hidden [n, hidden] by replaying the smallest graph that fits n."""
        n = ids.shape[0]
        bs = next(b for b in self.sizes if b >= n)
        self.ids[:n].copy_(ids)
        self.ids[n:bs].zero_()
        self.pos[:, :n].copy_(positions)
        self.pos[:, n:bs].zero_()
        self.slots[:n].copy_(layout.slot_mapping)
        self.slots[n:bs].fill_(self.runner.scratch_block * self.runner.block_size)
        self.runner.planner.plan(self._pad_layout(layout, bs), wrapper=self.wrappers[bs])
        self.runner.mark_planned()
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
