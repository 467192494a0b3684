"""A fake runtime (engine + processor) with the real interfaces, for servicer tests that need no model."""

from __future__ import annotations

import asyncio
import threading

import torch

from vlm_service import errors, types
from vlm_service.runtime import ModelInfo, Runtime


class FakeProcessor:
    """'Decodes' images: b'bad' is an invalid image; counts calls so tests can see what was decoded."""

    def __init__(self):
        self.calls = 0
        self._lock = threading.Lock()

    async def process_async(self, messages, executor) -> types.ProcessedInput:
        return await asyncio.get_running_loop().run_in_executor(executor, self.process, messages)

    def process(self, messages) -> types.ProcessedInput:
        with self._lock:
            self.calls += 1
        for i, msg in enumerate(messages):
            for j, part in enumerate(msg.content):
                if isinstance(part, types.ImageInput) and part.data == b"bad":
                    raise errors.InvalidImage("cannot decode the image", field=f"messages[{i}].content[{j}].image")
        ids = [1, 2, 3]
        return types.ProcessedInput(input_ids=ids, visuals=[], positions=torch.zeros(3, 3, dtype=torch.long),
                                    mrope_delta=0)


class FakeEngine:
    """Emits token i (text f"t{i} ") every `delay` seconds; max_tokens defaults to 8."""

    def __init__(self, max_waiting: int = 4, delay: float = 0.01):
        self.max_waiting = max_waiting
        self.delay = delay
        self.reserved: set[str] = set()
        self.aborted: set[str] = set()
        self.abort_calls: list[str] = []
        self.started = False

    def start(self):
        self.started = True

    async def stop(self, drain: bool):
        self.started = False

    def reserve(self, request_id: str) -> None:
        if request_id in self.reserved:
            raise errors.DuplicateRequest(f"request_id {request_id!r} is in flight", field="request_id")
        if len(self.reserved) >= self.max_waiting:
            raise errors.Overloaded("queue full")
        self.reserved.add(request_id)

    def release(self, request_id: str) -> None:
        self.reserved.discard(request_id)

    def abort(self, request_id: str) -> bool:
        self.abort_calls.append(request_id)
        if request_id not in self.reserved:
            return False
        self.aborted.add(request_id)
        return True

    def stats(self) -> dict:
        return {"requests": len(self.reserved)}

    async def generate(self, request_id, processed, sampling, arrival_time):
        n = sampling.max_tokens or 8
        try:
            for i in range(n):
                await asyncio.sleep(self.delay)
                if request_id in self.aborted:
                    yield types.Finished(request_id, types.FinishReason.ABORT, usage=types.Usage(3, i))
                    return
                yield types.TokenDelta(request_id, (100 + i,), f"t{i} ")
            yield types.Finished(request_id, types.FinishReason.LENGTH, usage=types.Usage(3, n),
                                 timings=types.Timings(ttft_ms=1.0, e2e_ms=2.0))
        finally:
            self.reserved.discard(request_id)
            self.aborted.discard(request_id)


def fake_runtime(engine: FakeEngine | None = None) -> Runtime:
    info = ModelInfo(model_id="fake", architecture="Fake", max_context=128, max_images=2, max_pixels=1000,
                     vit_attention_backend="sdpa", device="cpu", dtype="float32")
    return Runtime(engine=engine or FakeEngine(), processor=FakeProcessor(), info=info)
