"""Video decoding with PyAV, the limits checked from the container header before any frame is decoded.

decode_video: sniff (images and non-video containers refused), open, check the header (a video stream, frame size,
declared duration and frame count), demux the packets without decoding (exact frame count, keyframes, truncation),
choose the frames to keep (a sampler from video_config), then decode only those: from the keyframe before each
target to the segment's last target (video_frames.py: segments in parallel threads, unsampled non-reference
frames skipped), so 16 frames of a long clip cost 16 GOP prefixes, never the whole stream. Frames come out as
RGB24, the conversion transformers' PyAV reader uses, written into one [n, h, w, 3] array.
decode_frames: the same for clients that send already-extracted frames (encoded images) with timestamps or an fps.
Every failure is InvalidInput naming the field (messages[i].content[j].video), TooLarge for the byte limit.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlm_service.errors import InvalidInput, TooLarge

VIDEO_MIME_TYPES = ("video/mp4", "video/webm", "video/quicktime")
_MIME_TO_DEMUXER = {"video/mp4": "mov,mp4,m4a,3gp,3g2,mj2", "video/quicktime": "mov,mp4,m4a,3gp,3g2,mj2",
                    "video/webm": "matroska,webm"}
_DEMUXERS = frozenset(_MIME_TO_DEMUXER.values())
# the parallel decoder's workers open their containers during the demux (video_workers.py); off: after it, as
# before (benchmarks/sweep_video_threads.py's A/B)
PREOPEN_WORKERS = True
_IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


@dataclass(frozen=True)
class VideoLimits:
    """Server caps on one video (flags --max-video-*; see config.LimitsConfig)."""

    max_bytes: int = 256 << 20  # encoded size (RESOURCE_EXHAUSTED over it)
    max_frames: int = 256  # frames sampled from one video; a request's max_frames / fps are capped by it
    max_duration_s: float = 3600.0  # declared by the container header
    max_frame_pixels: int = 3840 * 2160  # width * height of one frame
    max_fps: float = 8.0  # a request's sampling fps is capped by it
    decode_timeout_s: float = 30.0  # wall time of demux + decode of one video


@dataclass
class DecodedVideo:
    """The kept frames and the timing the processor needs for positions and timestamps."""

    frames: np.ndarray  # [n, H, W, 3] uint8 RGB
    frame_times: list[float]  # seconds of each kept frame (index / fps, as transformers computes it)
    sampled_fps: float  # kept frames per second of video (transformers' VideoMetadata.sampled_fps)


FrameSize = Callable[[int, int, int], "tuple[int, int] | None"]  # (num_frames, height, width) -> resized size
FramesBuffer = Callable[[int, int, int], np.ndarray]  # (n, height, width) -> empty uint8 [n, height, width, 3]

# sampler(total_frames, source_fps, width, height) -> indices of the frames to keep, in presentation order; it may
# raise InvalidInput (e.g. a visual-token budget the sampled frames would exceed), before any frame is decoded
Sampler = Callable[[int, float, int, int], list[int]]


def supported_video_mime_types() -> tuple[str, ...]:
    return VIDEO_MIME_TYPES


def decode_video(data: bytes, mime_type: str, limits: VideoLimits, sampler: Sampler, field: str,
                 frame_size: FrameSize | None = None, frames_buffer: FramesBuffer | None = None,
                 workers: int = 0, threads=None, slot_written: Callable[[int], None] | None = None
                 ) -> DecodedVideo:
    """Decode the frames `sampler` picks from an encoded video, or raise InvalidInput / TooLarge naming `field`.

    frame_size(num_frames, height, width) -> (height, width): resize each frame to that as it is decoded (what
    video_preprocess does to the whole stack, frame by frame), so only resized frames are ever held; None from it:
    keep the decoded size (the GPU path resizes on the device). frames_buffer(n, height, width): the empty
    [n, height, width, 3] uint8 array the frames are written into (e.g. pinned memory); default np.empty.
    workers: decode threads over keyframe segments (0 = one per segment up to the cores; 1 = this thread);
    threads: their codecs' video_frames.CodecThreads (None: the server's default); slot_written(k): called (from
    a decode thread) once slot k of the buffer holds its frame (gpu_video.FramesJob uploads it then)."""
    if not data:
        raise InvalidInput("video is empty (zero bytes)", field=field)
    if len(data) > limits.max_bytes:
        raise TooLarge(f"video is {len(data)} bytes, over the limit of {limits.max_bytes}", field=field)
    expected = _expected_demuxer(mime_type, field)
    _refuse_images(data, field)
    deadline = time.monotonic() + limits.decode_timeout_s
    try:
        import av
    except ImportError:
        raise InvalidInput("this server has no video decoder (install vlm-service[video])", field=field) from None

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return _decode(data, container, expected, limits, sampler, field, deadline,
                           (frame_size, frames_buffer or _empty_frames, workers, threads, slot_written))
    except (InvalidInput, TooLarge):
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
            OverflowError, MemoryError) as exc:
        raise InvalidInput(f"corrupt or unsupported video: {str(exc)[:120]}", field=field) from None


def _expected_demuxer(mime_type: str, field: str) -> str | None:
    mime = mime_type.strip().lower()
    if not mime:
        return None
    if mime not in _MIME_TO_DEMUXER:
        raise InvalidInput(f"unsupported video mime type {mime_type[:40]!r} (supported: "
                           f"{', '.join(VIDEO_MIME_TYPES)})", field=field)
    return _MIME_TO_DEMUXER[mime]


def _refuse_images(data: bytes, field: str) -> None:
    # FFmpeg opens still images as one-frame "videos" (image2 demuxers): say what was sent instead
    riff_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    for magic, name in _IMAGE_MAGIC + ((data[:4], "WebP"),) * riff_webp:
        if data.startswith(magic):
            raise InvalidInput(f"this is a {name} image, not a video: send it as an image part", field=field)


def _decode(data: bytes, container, expected, limits: VideoLimits, sampler: Sampler, field: str, deadline: float,
            how: tuple) -> DecodedVideo:
    name = container.format.name
    if name not in _DEMUXERS:
        raise InvalidInput(f"not an MP4, MOV or WebM video (the bytes look like {name[:30]!r})", field=field)
    if expected is not None and name != expected:
        raise InvalidInput(f"declared mime type does not match the bytes ({name[:30]})", field=field)
    stream = _video_stream(container, field)
    _check_header(container, stream, limits, field)
    frame_size, frames_buffer, workers, threads, written = how
    pool = _early_workers(data, container, stream, limits, workers)
    try:
        pts, keyframes = _demux(container, stream, deadline, field, limits)
        src_fps = _source_fps(stream, pts)
        indices = sampler(len(pts), src_fps, stream.codec_context.width, stream.codec_context.height)
        if not indices:
            raise InvalidInput(f"video has {len(pts)} frames: too few to sample", field=field)
        width, height = stream.codec_context.width, stream.codec_context.height
        size = frame_size(len(indices), height, width) if frame_size else None
        out = frames_buffer(len(indices), *(size or (height, width)))
        frames = _decode_at(data, container, stream, [pts[i] for i in indices], keyframes, deadline, field, out,
                            size, (workers, threads, pool, written))
    finally:
        if pool is not None:
            pool.close()  # workers left without a job (an error above, or fewer segments than guessed)
    return DecodedVideo(frames, [i / src_fps for i in indices], len(indices) / len(pts) * src_fps)


def _early_workers(data: bytes, container, stream, limits: VideoLimits, workers: int):
    """video_workers.DecodeWorkers opening their containers now, while this thread demuxes (None: too few
    segments expected, one worker asked for, no index to guess from, or PREOPEN_WORKERS off)."""
    if not PREOPEN_WORKERS or workers == 1:
        return None
    from vlm_service.processor.video_frames import cpu_count
    from vlm_service.processor.video_workers import DecodeWorkers, expected_segments

    probes = min(limits.max_frames, int(_declared_duration(container, stream) * limits.max_fps))
    count = min(workers or cpu_count(), expected_segments(stream, probes))
    return DecodeWorkers(data, stream.index, count) if count > 1 else None


def _video_stream(container, field: str):
    if not container.streams.video:
        what = "only audio" if container.streams.audio else "no streams"
        raise InvalidInput(f"the file has no video stream ({what})", field=field)
    return container.streams.video[0]  # its codec threads are set by video_frames before it opens


def _check_header(container, stream, limits: VideoLimits, field: str) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise InvalidInput("the video stream declares no frame size", field=field)
    if width * height > limits.max_frame_pixels:
        raise InvalidInput(f"frames are {width}x{height} = {width * height} pixels, over the limit of "
                           f"{limits.max_frame_pixels}", field=field)
    duration = _declared_duration(container, stream)
    if duration > limits.max_duration_s:
        raise InvalidInput(f"video declares {duration:.0f} s, over the limit of {limits.max_duration_s:.0f} s",
                           field=field)


def _declared_duration(container, stream) -> float:
    """The longest of the container's and the stream's declared durations, in seconds (0 when neither says)."""
    seconds = container.duration / 1_000_000 if container.duration else 0.0  # AV_TIME_BASE units
    if stream.duration and stream.time_base:
        seconds = max(seconds, float(stream.duration * stream.time_base))
    return seconds


def _demux(container, stream, deadline: float, field: str, limits: VideoLimits) -> tuple[list[int], list[int]]:
    """Presentation timestamps of every frame (sorted) and of the keyframes, from the packets alone."""
    pts, keys = [], []
    for n, packet in enumerate(container.demux(stream)):
        if n % 256 == 0:
            _check_deadline(deadline, field)
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None or packet.is_discard or packet.size == 0:
            continue  # the demuxer's flush packet, or samples an edit list drops
        pts.append(stamp)
        if packet.is_keyframe:
            keys.append(stamp)
    declared = stream.frames
    if declared and len(pts) < declared:
        raise InvalidInput(f"truncated video: the header declares {declared} frames, the file holds {len(pts)}",
                           field=field)
    if not keys:
        raise InvalidInput("the video stream has no keyframe", field=field)
    if stream.time_base and pts and float((max(pts) - min(pts)) * stream.time_base) > limits.max_duration_s:
        raise InvalidInput(f"video spans over the limit of {limits.max_duration_s:.0f} s", field=field)
    return sorted(pts), sorted(keys)


def _source_fps(stream, pts: list[int]) -> float:
    """The stream's average frame rate, as transformers' PyAV reader takes it; else frames over the span."""
    if stream.average_rate:
        return float(stream.average_rate)
    span = float((pts[-1] - pts[0]) * stream.time_base) if len(pts) > 1 and stream.time_base else 0.0
    return (len(pts) - 1) / span if span > 0 else 24.0


def _decode_at(data: bytes, container, stream, targets: list[int], keyframes: list[int], deadline: float, field: str,
               out: np.ndarray, size: tuple[int, int] | None, how: tuple) -> np.ndarray:
    """Frames at presentation timestamps `targets` (ascending) into `out` [n, h, w, 3], from the keyframe before
    each (video_frames.py: keyframe segments, in parallel threads when there are several)."""
    from vlm_service.processor.video_frames import decode_segments, plan_segments, slot_store

    workers, threads, pool, written = how
    segments = plan_segments(targets, keyframes)
    write, seen = slot_store(targets, out, written), set()

    def convert(frame, threads: int | None) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24", **({"threads": threads} if threads else {}))
        return resize_frame(rgb, size) if size else rgb

    def store(pts: int, rgb: np.ndarray) -> None:
        write(pts, rgb)
        seen.add(pts)

    decode_segments(data, container, stream, segments, store, convert, deadline, field, workers, threads, pool)
    missing = sum(1 for t in targets if t not in seen)
    if missing:
        raise InvalidInput(f"corrupt video: {missing} of the sampled frames could not be decoded", field=field)
    return out


def resize_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 -> [h, w, 3] uint8 by video_preprocess's resize (bicubic + antialias, per frame)."""
    import torch

    from vlm_service.processor.video_preprocess import resize_frames

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # [1, 3, H, W]
    return resize_frames(x, *size)[0].permute(1, 2, 0).numpy()


def _empty_frames(n: int, height: int, width: int) -> np.ndarray:
    return np.empty((n, height, width, 3), dtype=np.uint8)


def _check_deadline(deadline: float, field: str) -> None:
    if time.monotonic() > deadline:
        raise InvalidInput("video decode took too long (over the server's decode time limit)", field=field)


def decode_frames(frames: list[bytes], mimes: list[str], timestamps: list[float], fps: float,
                  limits: VideoLimits, field: str) -> DecodedVideo:
    """Already-extracted frames (encoded images, all one size) with per-frame timestamps or a source fps."""
    from vlm_service.processor.image import decode_image

    if len(frames) > limits.max_frames:
        raise InvalidInput(f"{len(frames)} frames, over the limit of {limits.max_frames}", field=f"{field}.frames")
    if timestamps and len(timestamps) != len(frames):
        raise InvalidInput(f"{len(timestamps)} timestamps for {len(frames)} frames", field=f"{field}.timestamps")
    if sum(len(f) for f in frames) > limits.max_bytes:
        raise TooLarge(f"frames are over the limit of {limits.max_bytes} bytes", field=f"{field}.frames")
    images = [np.asarray(decode_image(data, mime, limits.max_frame_pixels, f"{field}.frames[{k}]"))
              for k, (data, mime) in enumerate(zip(frames, mimes))]
    if len({img.shape for img in images}) > 1:
        raise InvalidInput("frames must all have the same size", field=f"{field}.frames")
    times = list(timestamps) if timestamps else [k / fps for k in range(len(frames))]
    if any(b < a for a, b in zip(times, times[1:])):
        raise InvalidInput("timestamps must not decrease", field=f"{field}.timestamps")
    span = times[-1] - times[0]
    sampled_fps = (len(times) - 1) / span if span > 0 else (fps or 24.0)
    return DecodedVideo(np.stack(images), times, sampled_fps)
