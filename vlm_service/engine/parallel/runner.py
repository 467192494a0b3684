"""Rank 0's ModelRunner under tensor parallelism, and the loop a worker runs.

Rank 0 schedules, builds the flat batch and samples exactly as at TP=1; the one change is that each forward's
inputs are first sent to the workers (Channel), so every rank runs `ModelRunner.execute` on the same batch with its
own shard and its own KV pool (the same block ids, its own heads). The workers keep no per-request state: blocks,
prefix cache and vision cache live on rank 0 alone, so an abort or a preemption there is complete everywhere.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from vlm_service.engine.model_runner import ModelRunner
from vlm_service.engine.parallel.group import fatal_to_group
from vlm_service.engine.parallel.step import pack_step, unpack_step
from vlm_service.engine.parallel.vision import Rank0Model, encode_shared

log = logging.getLogger(__name__)


class ParallelModelRunner(ModelRunner):
    """ModelRunner whose every forward is mirrored on the workers; `on_error(reason)` hears of a failure once the
    workers are involved (fatal_to_group) before the exception goes up to the engine."""

    def __init__(self, model, cfg, device, num_blocks: int, channel, vision_mode: str,
                 on_error: Callable[[str], None] | None = None):
        super().__init__(Rank0Model(model, channel, vision_mode, lambda: self.on_error), cfg, device, num_blocks)
        self.channel, self.on_error = channel, on_error

    @torch.inference_mode()
    def execute(self, ids, positions, layout, sample_idx, mm, graphed) -> torch.Tensor:
        meta, tensors = pack_step(ids, positions, layout, sample_idx, mm, graphed)
        with fatal_to_group(self.on_error, "step"):
            self.channel.send("step", meta, tensors)
            return super().execute(ids, positions, layout, sample_idx, mm, graphed)


def worker_loop(runner: ModelRunner, channel) -> None:
    """Run rank 0's messages until "stop": "step" = one forward, "encode" = this rank's share of the images."""
    while True:
        kind, meta, tensors = channel.recv()
        if kind == "stop":
            return
        with torch.inference_mode():
            if kind == "step":
                ids, positions, layout, sample_idx, mm, graphed = unpack_step(meta, tensors)
                if runner._planned is not None:  # as ModelRunner.run: FlashInfer's staging buffer is free again
                    runner._planned.synchronize()
                # a rank whose graph capture failed runs the same step eagerly (the same collectives, in order)
                runner.execute(ids, positions, layout, sample_idx, mm, graphed and runner.graphs is not None)
            elif kind == "encode":
                grid = torch.tensor(meta["grid"], dtype=torch.long)
                encode_shared(runner.model, tensors[0], grid, channel.tp)
            else:
                raise RuntimeError(f"unknown message {kind!r} from rank 0")
