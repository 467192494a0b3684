"""Cost limits of image preprocessing (DESIGN.md, reliability 16): cheap-to-send images must not stall others.

A tiny lossless WebP can declare 6000x6000: a few hundred bytes on the wire, ~100 MB of pixels once decoded, a second
of CPU. Three limits, all decided from image headers before any pixel is decoded:
- per request: the declared pixels summed over its images (`max_request_pixels`, INVALID_ARGUMENT naming messages);
- server-wide: the estimated bytes of decodes in flight (`DecodeBudget`, `max_decode_memory_bytes`): a request waits
  (FIFO, without holding a thread) until its images fit, and gets RESOURCE_EXHAUSTED when they could never fit or the
  wait passes `max_decode_wait_s`;
- chats without images never wait behind decodes (the processor runs them on their own small lane).
A decode itself cannot be interrupted (PIL's C decoders); its time is bounded through the pixel limits instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from dataclasses import dataclass

from vlm_service.errors import InvalidInput, Overloaded

# the resized uint8 frame, its float32 values and the float32 patch rows (temporal patch 2 doubles them), per px
_RESIZED_BYTES_PER_PIXEL = 3 * (1 + 4 + 2 * 4)


def decode_bytes(width: int, height: int, bands: int, resized_pixels: int) -> int:
    """Peak bytes of decoding and preprocessing one image, from its header: the decoded frame, the EXIF-oriented copy
    and the RGB conversion (w*h*(2*bands + 3)), the resize's horizontal pass (<= w*h*3 bytes) and the arrays of the
    resized image (vision.py _preprocess). The largest image the default limits accept (40M px, resized to Qwen3-VL's
    16.7M) comes to ~1.2 GB, under the default budget of 2 GiB, so "could never fit" needs a smaller budget."""
    return width * height * (2 * bands + 6) + resized_pixels * _RESIZED_BYTES_PER_PIXEL


@dataclass(frozen=True)
class RequestCost:
    """What a request's images will cost, from their headers: declared pixels and estimated decode bytes."""

    images: int = 0
    pixels: int = 0
    decode_bytes: int = 0

    def check_pixels(self, max_request_pixels: int) -> None:
        """INVALID_ARGUMENT naming `messages` when the images declare more pixels than one request may."""
        if max_request_pixels and self.pixels > max_request_pixels:
            raise InvalidInput(f"messages: the images declare {self.pixels} pixels in all, over the per-request "
                               f"limit of {max_request_pixels}", field="messages")


class _Waiter:
    __slots__ = ("nbytes", "loop", "future", "granted")

    def __init__(self, nbytes: int, loop: asyncio.AbstractEventLoop):
        self.nbytes, self.loop, self.future, self.granted = nbytes, loop, loop.create_future(), False


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class DecodeBudget:
    """Bytes of image decodes in flight, server-wide (capacity 0 = unlimited). FIFO, so a large request is not
    starved by small ones; safe to share between threads and event loops (gRPC and HTTP)."""

    def __init__(self, capacity_bytes: int, max_wait_s: float = 0.0):
        self.capacity = capacity_bytes
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._used = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def used(self) -> int:
        """Bytes held now (0 when no decode is in flight)."""
        return self._used

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int):
        """Hold `nbytes` of the budget for the body; waits its turn. Raises Overloaded (RESOURCE_EXHAUSTED)."""
        if not self.capacity or nbytes <= 0:
            yield
            return
        if nbytes > self.capacity:
            raise Overloaded(f"messages: the images need about {nbytes >> 20} MiB to decode, more than the server's "
                             f"decode budget of {self.capacity >> 20} MiB; send smaller images", field="messages")
        await self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    async def _acquire(self, nbytes: int) -> None:
        waiter = _Waiter(nbytes, asyncio.get_running_loop())
        with self._lock:
            self._queue.append(waiter)
            self._grant()
        if waiter.granted:
            return
        try:
            await asyncio.wait_for(waiter.future, self.max_wait_s or None)
        except BaseException as exc:
            self._leave(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise Overloaded(f"messages: the server's image decode budget stayed full for {self.max_wait_s:g}s; "
                                 "retry later", field="messages") from None
            raise

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gives up (timeout, cancel): out of the queue, or back with its bytes if granted meanwhile."""
        with self._lock:
            if waiter.granted:
                self._used -= waiter.nbytes
            else:
                self._queue.remove(waiter)
            self._grant()

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
            self._grant()

    def _grant(self) -> None:
        """Under the lock: admit waiters from the head while they fit."""
        while self._queue and self._used + self._queue[0].nbytes <= self.capacity:
            waiter = self._queue.popleft()
            waiter.granted = True
            self._used += waiter.nbytes
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)
