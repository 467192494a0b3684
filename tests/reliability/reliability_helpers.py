"""Shared helpers of the reliability tests: config, images, stream collection, engine idleness."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

from PIL import Image

from vlm_service.config import Config, EngineConfig, HTTPConfig, LimitsConfig, ModelConfig, ServerConfig, TLSConfig

MAX_IMAGES = 2
RECEIVE_CAP = 8 << 20
CONTEXT = 1024


def rel_config(state_dir: Path, tls: TLSConfig | None = None, metrics_port: int = 0, uds: Path | None = None,
               tcp: bool = True, engine: dict | None = None, http_port: int | None = None, **limits) -> Config:
    """Demo model on CPU, plaintext unless `tls`; limits/engine fields override the suite's defaults; `http_port`
    (0 = a free port) turns the OpenAI-compatible HTTP front door on."""
    lim = {"max_images_per_request": MAX_IMAGES, "max_request_bytes": RECEIVE_CAP, **limits}
    eng = {"num_blocks": 256, "max_num_seqs": 8, "max_model_len": CONTEXT, "cuda_graphs": False, **(engine or {})}
    return Config(model=ModelConfig(model="demo", device="cpu", dtype="float32", vit_attention_backend="sdpa"),
                  engine=EngineConfig(**eng),
                  server=ServerConfig(port=0, uds=uds, tcp=tcp, state_dir=state_dir,
                                      tls=tls or TLSConfig(insecure=True), limits=LimitsConfig(**lim),
                                      metrics_port=metrics_port, drain_timeout_s=10, http=HTTPConfig(port=http_port)))


def png(w: int = 32, h: int = 24, seed: int | None = None, fmt: str = "PNG") -> bytes:
    """An image of random pixels (unique per seed)."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def collect(stream) -> tuple[list[int], object]:
    """(token ids, the Complete) of a successful stream; asserts the stream contract on the way."""
    chunks, completes = [], []
    for resp in stream:
        assert not completes, "nothing may follow the Complete"
        (chunks if resp.HasField("chunk") else completes).append(resp)
    assert len(completes) == 1, "a successful stream ends with exactly one Complete"
    return [t for c in chunks for t in c.chunk.token_ids], completes[0].complete


def busy(runtime) -> int:
    """Requests and KV blocks the engine and its async front still hold (0 when idle)."""
    s = runtime.engine.stats()
    return s.running + s.waiting + s.reserved + s.tracked_requests + s.kv_blocks_used


def wait_idle(runtime, timeout: float = 2.0) -> float | None:
    """Seconds until the engine is idle, or None when it is still busy after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if busy(runtime) == 0:
            return time.monotonic() - start
        time.sleep(0.005)
    return None


def wait_until(predicate, timeout: float = 5.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
