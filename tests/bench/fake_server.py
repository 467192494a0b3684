"""A tiny grpc.aio VisionLanguageService for harness tests: streams max_tokens one-token chunks with a fixed gap,
refuses images that are neither PNG nor JPEG with INVALID_ARGUMENT, and sleeps `slow_s` when the prompt says SLOW."""

from __future__ import annotations

import asyncio
import time

import grpc

from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc

MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class FakeServicer(vlm_pb2_grpc.VisionLanguageServiceServicer):
    def __init__(self, token_gap_s: float = 0.002, prefill_s: float = 0.005, slow_s: float = 2.0):
        self.token_gap_s, self.prefill_s, self.slow_s = token_gap_s, prefill_s, slow_s
        self.seen = 0
        self.in_flight = self.max_in_flight = 0

    async def Generate(self, request, context):
        self.seen += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async for resp in self._generate(request, context):
                yield resp
        finally:
            self.in_flight -= 1

    async def _generate(self, request, context):
        t0 = time.perf_counter()
        images = [p.image for m in request.messages for p in m.content if p.WhichOneof("kind") == "image"]
        text = " ".join(p.text for m in request.messages for p in m.content if p.WhichOneof("kind") == "text")
        for i, im in enumerate(images):
            if not im.data.startswith(MAGIC):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"messages[0].content[{i}].image: not an image")
        await asyncio.sleep(self.slow_s if "SLOW" in text else self.prefill_s)
        ttft = time.perf_counter() - t0
        n = request.sampling.max_tokens or 4
        for i in range(n):
            if i:
                await asyncio.sleep(self.token_gap_s)
            yield vlm_pb2.GenerateResponse(request_id=request.request_id, chunk=vlm_pb2.Chunk(token_ids=[7 + i]))
        timings = vlm_pb2.Timings(queue_ms=0.1, preprocess_ms=1.0, vision_ms=2.0, prefill_ms=1.5,
                                  ttft_ms=ttft * 1e3, e2e_ms=(time.perf_counter() - t0) * 1e3)
        usage = vlm_pb2.Usage(prompt_tokens=len(text.split()) + 10 * len(images), completion_tokens=n,
                              image_tokens=10 * len(images))
        yield vlm_pb2.GenerateResponse(request_id=request.request_id, complete=vlm_pb2.Complete(
            finish_reason=vlm_pb2.LENGTH, usage=usage, timings=timings))

    async def GetModelInfo(self, request, context):
        return vlm_pb2.ModelInfo(model_id="fake", architecture="Fake", device="cpu", vit_attention_backend="sdpa")


async def start_fake(servicer: FakeServicer | None = None, address: str = "127.0.0.1:0"):
    """Starts the fake on loopback (insecure). Returns (server, "host:port")."""
    server = grpc.aio.server()
    vlm_pb2_grpc.add_VisionLanguageServiceServicer_to_server(servicer or FakeServicer(), server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, f"127.0.0.1:{port}"


class FakeInThread:
    """The fake on its own event loop in a daemon thread, for code that calls asyncio.run itself (the CLI)."""

    def __init__(self, servicer: FakeServicer | None = None):
        import threading

        self.servicer = servicer or FakeServicer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.address = asyncio.run_coroutine_threadsafe(start_fake(self.servicer), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
