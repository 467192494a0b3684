"""ModelRunner: turns a SchedulerOutput into one model forward over a flat batch and returns the logits.

Flat batch of T tokens: input_ids [T], positions [3, T] (prefill: the slice of ProcessedInput.positions; generated
tokens: index + mrope_delta on all axes), slot_mapping [T], MultimodalEmbeds for the image-pad positions in this
step's chunks (from the vision cache; missing images of this step's prefills are encoded in ONE encode_images call).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from vlm_service.config import EngineConfig
from vlm_service.engine.attention import BatchLayout, TorchPagedAttention
from vlm_service.engine.scheduler import ScheduledChunk
from vlm_service.engine.sequence import PENDING, Sequence
from vlm_service.engine.transfer import tensor_to_device, to_device
from vlm_service.engine.vision_cache import VisionCache, VisionEmbeds
from vlm_service.models.common import MultimodalEmbeds, VLModel

log = logging.getLogger(__name__)


def model_dtype(model) -> torch.dtype:
    params = getattr(model, "parameters", None)
    p = next(iter(params()), None) if params else None
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def kv_block_bytes(spec, block_size: int, dtype: torch.dtype) -> int:
    return spec.num_layers * 2 * block_size * spec.num_kv_heads * spec.head_dim * dtype.itemsize


def pool_num_blocks(cfg: EngineConfig, spec, dtype: torch.dtype, device: torch.device) -> int:
    """EngineConfig.num_blocks, or what fits in kv_memory_fraction of free GPU memory / kv_cpu_bytes on CPU."""
    if cfg.num_blocks > 0:
        return cfg.num_blocks
    per_block = kv_block_bytes(spec, cfg.block_size, dtype)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(int(free * cfg.kv_memory_fraction) // per_block, 1)
    return max(cfg.kv_cpu_bytes // per_block, 1)


@dataclass
class PrevTokens:
    """The previous step's sampled tokens, still on the device: tokens [n] and each sequence's row (by id())."""

    tokens: torch.Tensor
    rows: dict[int, int]


class _VisionTimer:
    """Time of one encode_images call: CUDA events on the GPU (read later, so the engine never waits for the
    tower just to time it), the wall clock on the CPU."""

    def __init__(self, device: torch.device, seqs: list[Sequence]):
        self.seqs, self.cuda = seqs, device.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.monotonic()

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.ms = (time.monotonic() - self.t0) * 1000.0

    def settle(self) -> None:
        if self.cuda:
            self.end.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        for seq in self.seqs:
            seq.times.vision_ms += self.ms


# head dims FlashInfer 0.6's paged prefill/decode kernels are built for (others fail at run time)
FLASHINFER_HEAD_DIMS = (64, 128, 256)


class ModelRunner:
    """Owns the KV pool, the vision cache and (on CUDA) the FlashInfer planner and decode CUDA graphs."""

    def __init__(self, model: VLModel, cfg: EngineConfig, device: torch.device | str, num_blocks: int):
        self.model, self.cfg, self.spec = model, cfg, model.spec
        self.device = torch.device(device)
        self.dtype = model_dtype(model)
        self.block_size = cfg.block_size
        s = self.spec
        # one extra block at the end: scratch for CUDA-graph padding rows, never handed out by the BlockManager
        self.kv_caches = [torch.zeros(num_blocks + 1, 2, cfg.block_size, s.num_kv_heads, s.head_dim,
                                      dtype=self.dtype, device=self.device) for _ in range(s.num_layers)]
        self.scratch_block = num_blocks
        self.vision_cache = VisionCache(cfg.vision_cache_bytes)
        # items too big for the vision cache (a long video), kept while the steps that prefill them go on, so each
        # chunk of a chunked prefill does not encode the whole video again
        self._oversize: dict[str, VisionEmbeds] = {}
        self.planner = self.graphs = self.prefill_graphs = None
        self._planned: torch.cuda.Event | None = None
        self._vision_timers: list[_VisionTimer] = []
        if self.device.type == "cuda" and s.head_dim in FLASHINFER_HEAD_DIMS:
            self._init_cuda()
        elif self.device.type == "cuda":
            log.warning("head_dim %d has no FlashInfer paged-attention kernel; using torch attention, no CUDA graphs",
                        s.head_dim)

    def _init_cuda(self) -> None:
        from vlm_service.engine.attention import FlashInferPlanner
        from vlm_service.engine.cuda_graphs import DecodeGraphs
        from vlm_service.engine.prefill_graphs import make_prefill_graphs

        self.planner = FlashInferPlanner(self.device, self.spec, self.dtype, self.block_size)
        if self.cfg.cuda_graphs:
            try:
                self.graphs = DecodeGraphs(self, self.cfg.max_num_seqs)
            except Exception:  # a model that cannot be captured still serves, eagerly
                log.exception("CUDA graph capture failed; decoding eagerly")
                self.graphs = None
            self.prefill_graphs = make_prefill_graphs(self)

    # ---- the step --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk], prev: PrevTokens | None = None) -> torch.Tensor:
        """Forward the step's chunks; returns logits [n, vocab] float32 for the chunks that sample, in order.

        A sequence whose last token was sampled by the previous step but not yet read back (sequence.PENDING in its
        output_ids) takes that token straight from the device: `prev` holds the previous step's token tensor and
        each such sequence's row in it."""
        if self._planned is not None:
            # FlashInfer's plan() stages its tables in one page-locked host buffer and copies them asynchronously;
            # the previous step's copy must have left that buffer before this step's plan() rewrites it
            self._planned.synchronize()
        ids, positions, layout = self._flatten(chunks, prev)
        sample_idx = self._sample_indices(chunks)
        graphed = self.graphs is not None and self.graphs.can_run(chunks)
        mm = None if graphed else self._multimodal(chunks)
        return self.execute(ids, positions, layout, sample_idx, mm, graphed)

    @torch.inference_mode()
    def execute(self, ids: torch.Tensor, positions: torch.Tensor, layout: BatchLayout, sample_idx: torch.Tensor,
                mm: MultimodalEmbeds | None, graphed: bool) -> torch.Tensor:
        """The forward of a flat batch -> logits [len(sample_idx), vocab] float32: the part every tensor-parallel
        rank runs (engine/parallel/ sends these inputs to the workers)."""
        if graphed:
            hidden = self.graphs.run(ids, positions, layout)
        elif self.prefill_graphs is not None and self.prefill_graphs.fits(ids.shape[0]):
            hidden = self.prefill_graphs.run(ids, positions, layout, mm)
        else:
            hidden = self.model.forward(ids, positions, self._attention(layout), mm)
        return self.model.compute_logits(hidden[sample_idx]).float()

    def _attention(self, layout: BatchLayout):
        if self.planner is None:
            return TorchPagedAttention(self.kv_caches, layout, self.spec.head_dim ** -0.5)
        from vlm_service.engine.attention import FlashInferAttention

        wrapper = self.planner.plan(layout)
        self.mark_planned()
        return FlashInferAttention(self.kv_caches, layout.slot_mapping, wrapper)

    def mark_planned(self) -> None:
        """Called right after a FlashInfer plan() of this step (see run())."""
        self._planned = torch.cuda.Event()
        self._planned.record()

    def _sample_indices(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        idx, end = [], 0
        for c in chunks:
            end += c.num_tokens
            if c.samples:
                idx.append(end - 1)
        return to_device(idx, torch.long, self.device)

    # ---- flat batch ------------------------------------------------------------------------------------------
    def _flatten(self, chunks: list[ScheduledChunk], prev: PrevTokens | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, BatchLayout]:
        """The step's flat inputs: ids [T], positions [3, T], slot mapping [T], built from Python ints where it
        can (decode rows), so a step of 64 decodes costs a handful of tensor builds, not hundreds."""
        ids: list[int] = []
        patch_at: list[int] = []  # flat index of each PENDING token ...
        patch_from: list[int] = []  # ... and its row in prev.tokens
        slots: list[int] = []
        pos_parts: list[torch.Tensor] = []
        gen_pos: list[int] = []  # positions of generated tokens (equal on all three axes), not yet flushed
        for c in chunks:
            ids += c.seq.token_range(c.start, c.end)
            if ids[-1] == PENDING:  # only the newest token can still be on the device
                patch_at.append(len(ids) - 1)
                patch_from.append(prev.rows[id(c.seq)])
            slots += self._slots(c.seq.block_table, c.start, c.end)
            n = c.seq.num_prompt_tokens
            if c.start < n:  # prompt tokens: the processor's MRoPE positions
                if gen_pos:
                    pos_parts.append(torch.tensor(gen_pos, dtype=torch.long).expand(3, -1))
                    gen_pos = []
                pos_parts.append(c.seq.processed.positions[:, c.start:min(c.end, n)].to(torch.long))
            delta = c.seq.processed.mrope_delta
            gen_pos += range(max(c.start, n) + delta, c.end + delta)
        if gen_pos:
            pos_parts.append(torch.tensor(gen_pos, dtype=torch.long).expand(3, -1))
        positions = pos_parts[0] if len(pos_parts) == 1 else torch.cat(pos_parts, dim=1)
        layout = BatchLayout([c.num_tokens for c in chunks], [c.end for c in chunks],
                             [c.seq.block_table for c in chunks],
                             to_device(slots, torch.long, self.device))
        ids_t = to_device(ids, torch.long, self.device)
        if patch_at:
            ids_t[to_device(patch_at, torch.long, self.device)] = prev.tokens[to_device(patch_from, torch.long,
                                                                                           self.device)]
        return ids_t, tensor_to_device(positions.contiguous(), self.device), layout

    def _slots(self, table: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [table[i // bs] * bs + i % bs for i in range(start, end)]

    # ---- visual items (images, videos) ----------------------------------------------------------------------
    def _multimodal(self, chunks: list[ScheduledChunk]) -> MultimodalEmbeds | None:
        embeds = self._vision_embeds(chunks)
        if not embeds:
            return None
        mask, parts, deep_parts = [], [], []
        for c in chunks:
            m = torch.zeros(c.num_tokens, dtype=torch.bool)
            for span in c.seq.visuals_in(c.start, c.end):
                a, b = max(c.start, span.offset), min(c.end, span.end)
                m[a - c.start:b - c.start] = True
                emb, deep = embeds[span.content_hash]
                lo, hi = span.embed_start + a - span.offset, span.embed_start + b - span.offset  # item's rows
                parts.append(emb[lo:hi])
                deep_parts.append([d[lo:hi] for d in deep])
            mask.append(m)
        if not parts:
            return None
        deepstack = [torch.cat(layer) for layer in zip(*deep_parts)] if deep_parts and deep_parts[0] else None
        flat = torch.cat(mask)  # stays on the host: the models place embeddings by `index`
        index = to_device(flat.nonzero()[:, 0].tolist(), torch.long, self.device)
        return MultimodalEmbeds(torch.cat(parts), flat, deepstack, index)

    def _vision_embeds(self, chunks: list[ScheduledChunk]) -> dict[str, VisionEmbeds]:
        """Embeddings of every visual item (image or video) this step's chunks overlap; those the cache lacks are
        encoded together in one encode_images call. An item only ahead of a chunk is not encoded yet (the scheduler
        can then keep a large image's encode out of a step, prefill_policy.py), but an oversize one already
        encoded is kept for the later chunks."""
        found: dict[str, VisionEmbeds] = {}
        todo: dict[str, object] = {}  # content hash -> ProcessedVisual
        owners: dict[str, list[Sequence]] = {}
        for c in chunks:
            for span in c.seq.visuals:
                key = span.content_hash
                if span.end <= c.start or key in found:
                    continue
                if span.offset >= c.end:  # ahead of this chunk
                    if key in self._oversize:
                        found[key] = self._oversize[key]
                    continue
                if key in todo:
                    owners[key].append(c.seq)
                    continue
                hit = self._oversize.get(key) or self.vision_cache.get(key)
                if hit is not None:
                    found[key] = hit
                else:
                    todo[key], owners[key] = c.seq.processed.visuals[span.item], [c.seq]
        if todo:
            found.update(self._encode(todo, owners))
        self._oversize = {k: v for k, v in found.items() if k not in self.vision_cache.entries}
        return found

    def _encode(self, todo: dict, owners: dict) -> dict[str, VisionEmbeds]:
        seqs = list({id(s): s for ss in owners.values() for s in ss}.values())
        timer = _VisionTimer(self.device, seqs)
        items = list(todo.values())
        # one copy per item: each is asynchronous when the processor pinned it (a host-side cat would not be)
        parts = [item.pixel_values.to(self.device, non_blocking=True) for item in items]
        for part, item in zip(parts, items):
            if part is item.pixel_values and part.is_cuda:  # made on a preprocessing thread's stream (gpu_preprocess)
                part.record_stream(torch.cuda.current_stream(self.device))  # no reuse before the tower read it
        pixels = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(self.dtype)
        grid = torch.tensor([item.grid_thw for item in items], dtype=torch.long)  # the towers read it on the host
        results = self.model.encode_images(pixels, grid)
        timer.stop()
        self._vision_timers.append(timer)
        out = {}
        for key, res in zip(todo, results):
            item = (res[0], list(res[1]))
            self.vision_cache.put(key, item)
            out[key] = item
        return out

    def settle_vision_times(self) -> None:
        """Add each finished encode's time to its sequences' vision_ms. The engine calls this after reading a
        step's tokens back, when every encode launched before is done (so nothing here waits)."""
        timers, self._vision_timers = self._vision_timers, []
        for timer in timers:
            timer.settle()
