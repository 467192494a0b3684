"""Decoding the sampled frames of a video: keyframe segments, decoded in parallel threads (video.py calls this).

The sampled presentation timestamps are grouped by the keyframe before each (a segment: seek there, decode until
its last target). Segments are independent, so with several of them each worker thread opens its own container over
the same bytes and decodes whole segments, longest first; FFmpeg decodes and converts with the GIL released, so
the threads run on separate cores. The cores are split among the workers' codecs in proportion to the decoding
each has to do (frame threads; thread_count set before the codec opens, which PyAV does at the first decode), so
the longest GOP prefix, the critical path, gets the most (CodecThreads: that share scaled, the thread type, optionally
all cores for the longest; benchmarks/sweep_video_threads.py measures the choices). Two further cuts:
- H.264 frames that no other frame references (nal_ref_idc 0) and that are not sampled are skipped
  (skip_frame NONREF, switched per packet): nothing else depends on them, and they are about 40 % of an x264
  stream's frames with B-frames;
- only the kept frames are converted to RGB24 (PyAV's to_ndarray, the conversion transformers' PyAV reader uses),
  optionally resized (the CPU path), and written straight into their slots of one output array (for the GPU path
  a pinned host buffer).
The frames are those of a plain decode from the start (tests/processor/test_video_decode.py).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import queue
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlm_service.errors import InvalidInput

log = logging.getLogger(__name__)
# drain the codec once a segment's targets are all sent (_decode_segment); off: keep sending packets until the last
# target comes out, as before (benchmarks/sweep_video_threads.py's A/B)
DRAIN_AFTER_TARGETS = True
THREADS_SCALE_ENV = "VLM_VIDEO_DECODE_THREADS_SCALE"  # tuning knob: CodecThreads.scale of the server's decodes

# whose non-reference frames (nal_ref_idc 0) no other frame uses; not HEVC: its "non-reference" NAL types are so only
# within their temporal sub-layer, a higher one may still predict from them
_SKIP_NONREF_CODECS = ("h264",)

# convert(frame, swscale threads or None for FFmpeg's choice) -> the [h, w, 3] uint8 RGB array of a kept frame
Convert = Callable[[object, "int | None"], np.ndarray]


@dataclass(frozen=True)
class CodecThreads:
    """How parallel segment decoders split the cores among their codecs (FFmpeg threads, set before each opens).

    A worker's codec gets max(1, round(scale * cores * span / total span)) threads, span: the decoding its first
    (longest) segment needs. scale 1 splits the cores exactly; above 1 oversubscribes them, which pays where frame
    threads stall on their reference rows and leave cores idle. longest > 0: the worker of the longest segment
    (the critical path) gets that many instead. thread_type: FFmpeg's FRAME (frames in flight), SLICE (one frame's
    slices; an x264 stream has one slice per frame unless encoded with sliced threads) or AUTO (both)."""

    # 1.5, measured (benchmarks/sweep_video_threads.py on the H200 host, 16 cores; results/2026-12-02_h200_s7):
    # prepare_device of the TTFT clip 79.3 ms at 1.0, 78.0 at 1.5, 84.0 at 2.0, 96.5 at 3.0, 82.8 at 0.7 (all
    # host changes on); FRAME-only 78.5, SLICE-only 78.3, all cores for the longest segment 85.1. Frame threads
    # stall on their reference rows, so a little oversubscription fills idle cores; much more only adds switches.
    # 1.0 to 1.5 is ~1 ms, within the run-to-run spread: the default is the sweep's best, not a proven win
    scale: float = 1.5
    thread_type: str = "AUTO"
    longest: int = 0

    def count(self, span: int, total: int, cores: int, is_longest: bool) -> int:
        if is_longest and self.longest > 0:
            return self.longest
        return max(1, round(self.scale * cores * span / total))


def default_threads() -> CodecThreads:
    """The server's CodecThreads: scale from $VLM_VIDEO_DECODE_THREADS_SCALE when set (a tuning knob), else the
    default's."""
    return _threads_from(os.environ.get(THREADS_SCALE_ENV, ""))


@functools.lru_cache(maxsize=4)
def _threads_from(text: str) -> CodecThreads:
    if not text:
        return CodecThreads()
    try:
        scale = float(text)
        if not 0.1 <= scale <= 16.0:
            raise ValueError
    except ValueError:
        log.warning("%s=%r is not a number in [0.1, 16]: using %s", THREADS_SCALE_ENV, text[:20],
                    CodecThreads().scale)
        return CodecThreads()
    return CodecThreads(scale=scale)


def plan_segments(targets: list[int], keyframes: list[int]) -> list[tuple[int, list[int]]]:
    """(keyframe pts, the sorted unique targets it leads to) per segment, in stream order."""
    segments: dict[int, list[int]] = {}
    for target in sorted(set(targets)):
        key = keyframes[max(bisect.bisect_right(keyframes, target) - 1, 0)]
        segments.setdefault(key, []).append(target)
    return list(segments.items())


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_segments(data: bytes, container, stream, segments: list[tuple[int, list[int]]], store: Callable,
                    convert: Convert, deadline: float, field: str, workers: int = 0,
                    threads: CodecThreads | None = None, pool=None) -> None:
    """Decode every segment, calling store(pts, convert(frame)) once per target pts.

    container / stream: the open container (used when one worker decodes); workers: threads (0 = one per
    segment, at most a thread per core; 1 = on the calling thread, the original container); threads: the codec
    threads of parallel workers (None: default_threads()); pool: video_workers.DecodeWorkers started earlier
    (their containers opened while the caller demuxed), grown or left partly unused as the segments need; it is
    run or closed here."""
    from vlm_service.processor.video_workers import DecodeWorkers

    cores = cpu_count()
    threads = threads or default_threads()
    workers = min(len(segments), workers or cores)
    if workers <= 1:
        if pool is not None:
            pool.close()
        _set_threads(stream, 0)
        for key, targets in segments:
            _decode_segment(container, stream, key, targets, store, convert, deadline, field, None)
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for seg in sorted(segments, key=_span, reverse=True):  # longest first: the critical path starts at once
        todo.put(seg)
    spans = [_span(seg) for seg in segments]

    def count(span: int) -> int:  # codec threads of a worker whose first segment is `span` long
        return threads.count(span, sum(spans), cores, span == max(spans))

    pool = pool if pool is not None else DecodeWorkers(data, stream.index)
    pool.grow(workers)
    pool.run(lambda c, error: _worker(c, error, stream.index, todo, store, convert, deadline, field, count,
                                      threads.thread_type))  # re-raises a worker's InvalidInput / FFmpeg error


def _span(segment: tuple[int, list[int]]) -> int:
    """How much decoding a segment is, in pts units (keyframe to last target; at least 1)."""
    key, targets = segment
    return max(targets[-1] - key, 0) + 1


def _worker(container, error: BaseException | None, index: int, todo: queue.SimpleQueue, store, convert,
            deadline: float, field: str, count: Callable[[int], int], thread_type: str) -> None:
    """Decode segments from `todo` until it is empty, on this worker's own container (error: why it could not be
    opened). Its codec gets count(span of its first, longest, segment) threads: the cores go to the long GOPs. A
    failure empties `todo`, so the other workers stop after their current segment."""
    segment = _next(todo)
    if segment is None:
        return
    try:
        if error is not None:
            raise error
        stream = container.streams[index]  # the same bytes: the same stream layout
        _set_threads(stream, count(_span(segment)), thread_type)
        while segment is not None:
            _decode_segment(container, stream, *segment, store, convert, deadline, field, 1)
            segment = _next(todo)
    except BaseException:
        while _next(todo) is not None:
            pass
        raise


def _next(todo: queue.SimpleQueue):
    try:
        return todo.get_nowait()
    except queue.Empty:
        return None


def _set_threads(stream, count: int, thread_type: str = "AUTO") -> None:
    """`count` codec threads (0 = FFmpeg's choice) of `thread_type` (AUTO: frame + slice); only before the codec
    opens."""
    codec = stream.codec_context
    if not codec.is_open:
        codec.thread_type = thread_type
        codec.thread_count = count


def _decode_segment(container, stream, key: int, targets: list[int], store, convert, deadline: float,
                    field: str, sws_threads: int | None) -> None:
    """Seek to keyframe `key` and decode until the last of `targets` (sorted), storing each target frame.
    sws_threads: 1 when segments run in parallel (the cores are theirs), None alone (FFmpeg's choice).

    Once every target's packet has been sent the decoder is drained (decode(None)): the frames still in flight
    come out now, without sending the packets after them that frame threads (a frame comes out only when
    thread_count - 1 later packets are in) and B-frame reordering (has_b_frames later frames) would otherwise
    wait for and decode for nothing. The next seek's flush_buffers resets the drained codec."""
    codec = stream.codec_context
    skip = codec.name in _SKIP_NONREF_CODECS
    wanted, unsent, last = set(targets), set(targets), targets[-1]
    for packet in _packets_from(container, stream, key):
        if time.monotonic() > deadline:
            raise InvalidInput("video decode took too long (over the server's decode time limit)", field=field)
        if skip:  # read by the decoder when the packet is submitted, also with frame threads
            codec.skip_frame = "DEFAULT" if packet.pts in wanted or packet.pts is None else "NONREF"
        frames = codec.decode(packet)
        if packet.pts is not None and unsent:
            unsent.discard(packet.pts)
            if not unsent and DRAIN_AFTER_TARGETS:  # every target is in the decoder (its references were before it)
                frames += codec.decode(None)
        for frame in frames:
            pos = frame.pts
            if pos in wanted:
                wanted.discard(pos)
                store(pos, convert(frame, sws_threads))
            if pos is None or pos >= last:
                return
        if not unsent and DRAIN_AFTER_TARGETS:
            return


def _packets_from(container, stream, key: int):
    """The stream's packets in decode order from keyframe `key` on (then the flush packets at its end)."""
    container.seek(key, stream=stream, backward=True, any_frame=False)
    return container.demux(stream)


def slot_store(targets: list[int], out: np.ndarray,
               written: Callable[[int], None] | None = None) -> Callable[[int, np.ndarray], None]:
    """store(pts, rgb) writing rgb into every slot k of `out` [n, h, w, 3] whose targets[k] is pts (a sampler may
    keep one frame twice), then calling written(k) if given; each slot is written by one thread only."""
    slots: dict[int, list[int]] = {}
    for k, target in enumerate(targets):
        slots.setdefault(target, []).append(k)

    def store(pts: int, rgb: np.ndarray) -> None:
        for k in slots[pts]:
            out[k] = rgb
            if written is not None:
                written(k)
    return store
