"""EngineStats: what the engine thread publishes after each step for the asyncio side (admission counts,
stats(), the metrics poller), built from the LLMEngine's bookkeeping in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    running: int = 0
    waiting: int = 0  # queued in the engine, not yet admitted (reservations not included)
    reserved: int = 0  # admitted by reserve(), preprocessing not finished
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    tracked_requests: int = 0  # ids known anywhere (reservations, streams, engine state)
    prefix_cache_hit_tokens: int = 0
    vision_cache_hits: int = 0
    vision_cache_misses: int = 0
    paused: int = 0  # requests paused because their reader is behind (holding no KV blocks)


def snapshot(engine) -> EngineStats:
    """The engine's counts now (engine thread only: it reads the scheduler and caches unlocked); `reserved` and
    `tracked_requests` are the asyncio side's and left 0 here."""
    sched, vc, blocks = engine.scheduler, engine.runner.vision_cache, engine.block_manager
    return EngineStats(len(sched.running), len(sched.waiting), 0, blocks.num_used_blocks, blocks.num_blocks, 0,
                       sched.prefix_hit_tokens, vc.hits, vc.misses, sched.paused)
