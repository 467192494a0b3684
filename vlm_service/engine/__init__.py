"""LLM decode core: paged KV pool, continuous batching, prefix and vision caches, sampler, async engine."""

from vlm_service.engine.async_engine import AsyncEngine, EngineStats
from vlm_service.engine.engine import LLMEngine

__all__ = ["AsyncEngine", "EngineStats", "LLMEngine"]
