"""Visual items of a prompt (images and videos): preparing a video, its prompt text, and the pad expansion.

A prepared item knows its pixel values, grid and content hash, and how it lies in the prompt (for a video, as its
family's position function decides: family_rules.py, reached through VideoConfig.rules):
- an image: one `<|image_pad|>` -> t*h*w/m^2 pads, one run;
- a Qwen2.5-VL video: one `<|video_pad|>` -> t*h*w/m^2 pads, one run whose frames sit tokens_per_second *
  int(second_per_grid_t) apart on the temporal MRoPE axis (Qwen2_5_VLProcessor + get_rope_index);
- a Qwen3-VL video: each `<|video_pad|>` of the rendered chat becomes, per temporal group g,
  `<{time_g:.1f} seconds><|vision_start|><|video_pad|><|vision_end|>` (Qwen3VLProcessor.replace_video_token keeps
  the template's outer vision_start / vision_end), then each pad -> h*w/m^2 pads: t runs of one frame group.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from vlm_service.errors import InvalidInput
from vlm_service.processor.family_rules import VideoTiming
from vlm_service.processor.positions import VisualRun
from vlm_service.processor.video import DecodedVideo, VideoLimits, decode_frames, decode_video
from vlm_service.processor.video_config import VideoConfig, resize_size, sample_indices
from vlm_service.processor.video_preprocess import preprocess_video
from vlm_service.types import VideoInput

VIDEO_PAD = "<|video_pad|>"
# a video's content hash (sha256 of its bytes: ~1 ms a 2 MB clip, ~150 ms at the 256 MiB limit) is computed on a
# helper thread while it decodes (hashlib drops the GIL for big buffers); off: after the decode, as before
HASH_DURING_DECODE = True
_hasher: ThreadPoolExecutor | None = None
_hasher_lock = threading.Lock()


@dataclass
class PreparedVisual:
    """A decoded and preprocessed visual item, before its place in the prompt is known."""

    pixel_values: torch.Tensor
    grid: tuple[int, int, int]
    content_hash: str
    kind: str = "image"
    decode_ms: float = 0.0  # container + codec (or image) decode time
    timing: VideoTiming = VideoTiming()  # videos: the family's position function's answer (family_rules.py)

    def num_tokens(self, merge: int) -> int:
        t, h, w = self.grid
        return t * h * w // merge**2

    def runs(self, merge: int) -> list[tuple[int, int, int, int]]:
        """(t, h, w, time_interval) in merged units of each pad run, in prompt order."""
        t, h, w = self.grid[0], self.grid[1] // merge, self.grid[2] // merge
        if self.timing.run_per_group:
            return [(1, h, w, 1)] * t
        return [(t, h, w, self.timing.time_interval)]


def sampling_of(part: VideoInput, cfg: VideoConfig, limits: VideoLimits) -> tuple[float, int]:
    """(fps, max_frames) a request gets: its own values capped by the server, else the checkpoint's."""
    fps = min(part.fps, limits.max_fps) if part.fps else cfg.fps
    max_frames = min(part.max_frames or cfg.max_frames, cfg.max_frames, limits.max_frames)
    return fps, max_frames


def video_hash(part: VideoInput, fps: float, max_frames: int) -> str:
    """The cache key of a video: its bytes (or frames and their timing) plus the sampling that was applied."""
    h = hashlib.sha256(b"video\0")
    if part.data:
        h.update(part.data)
    for frame in part.frames:
        h.update(len(frame.data).to_bytes(8, "little") + frame.data)
    h.update(repr((part.timestamps, part.frames_fps, fps, max_frames)).encode())
    return h.hexdigest()


def prepare_video(part: VideoInput, cfg: VideoConfig, limits: VideoLimits, field: str,
                  out_dtype: torch.dtype = torch.float32, pin: bool = False, max_tokens: int = 0,
                  gpu=None) -> PreparedVisual:
    """Decode (file or frames), sample, resize and patchify one video; InvalidInput / TooLarge name `field`.

    max_tokens (> 0): the visual tokens this video may take, checked from the header before frames are decoded.
    gpu: a gpu_video.GpuVideoPreprocessor: the frames are decoded at their own size into its host buffer and
    resized, normalised and laid out on its device (out_dtype / pin are then its own)."""
    fps, max_frames = sampling_of(part, cfg, limits)
    content_hash = _hash_pool().submit(video_hash, part, fps, max_frames) if HASH_DURING_DECODE else None
    started = time.perf_counter()
    jobs: list = []  # the GPU path's gpu_video.FramesJob, once the decoder asked for its buffer
    try:
        decoded = _decode(part, cfg, limits, field, fps, max_frames, max_tokens, gpu, jobs)
    except BaseException:
        if content_hash is not None:
            content_hash.cancel()  # not started yet (a queue of refused videos): not needed
        raise
    decode_ms = (time.perf_counter() - started) * 1000.0
    tp = cfg.temporal_patch_size
    if len(decoded.frames) < tp:
        raise InvalidInput(f"video yields {len(decoded.frames)} frame(s); at least {tp} are needed", field=field)
    try:
        if jobs:
            pixels, grid = jobs[0].finish()  # the frames went up (and were resized) as they were decoded
        elif gpu is not None:
            pixels, grid = gpu(decoded.frames)
        else:
            pixels, grid = preprocess_video(decoded.frames, cfg, out_dtype, pin, resized=bool(part.data))
    except ValueError as exc:  # smart_resize's aspect-ratio refusal
        raise InvalidInput(f"video frames cannot be resized: {exc}", field=field) from None
    timing = cfg.rules.video_timing(cfg, decoded.frame_times, decoded.sampled_fps)
    key = content_hash.result() if content_hash is not None else video_hash(part, fps, max_frames)
    return PreparedVisual(pixels, grid, key, kind="video", decode_ms=decode_ms, timing=timing)


def _hash_pool() -> ThreadPoolExecutor:
    """The process's video-hash threads (made on first use; as many as the preprocessing pool might decode at
    once is more than needed: a hash takes a fraction of its decode)."""
    global _hasher
    with _hasher_lock:
        if _hasher is None:
            _hasher = ThreadPoolExecutor(4, thread_name_prefix="video-hash")
        return _hasher


def video_tokens(cfg: VideoConfig, num_frames: int, height: int, width: int) -> int:
    """Merged tokens of `num_frames` sampled frames of height x width (frames padded to temporal groups)."""
    h, w = resize_size(cfg, num_frames, height, width)
    groups = -(-num_frames // cfg.temporal_patch_size)
    return groups * (h // cfg.factor) * (w // cfg.factor)


def _decode(part: VideoInput, cfg: VideoConfig, limits: VideoLimits, field: str, fps: float,
            max_frames: int, max_tokens: int = 0, gpu=None, jobs: list | None = None) -> DecodedVideo:
    if part.data and part.frames:
        raise InvalidInput("give either data or frames, not both", field=field)
    if part.frames:
        if not part.timestamps and part.frames_fps <= 0:
            raise InvalidInput("frames need timestamps or a source fps", field=f"{field}.frames")
        return decode_frames([f.data for f in part.frames], [f.mime_type for f in part.frames],
                             list(part.timestamps), part.frames_fps, limits, field)

    def sampler(total: int, src_fps: float, width: int, height: int) -> list[int]:
        indices = sample_indices(cfg, total, src_fps, fps, max_frames)
        if max_tokens > 0 and len(indices) >= cfg.temporal_patch_size:
            n = video_tokens(cfg, len(indices), height, width)
            if n > max_tokens:
                raise InvalidInput(f"video would take {n} visual tokens, over the {max_tokens} left of the "
                                   "request's limit (lower fps or max_frames)", field=field)
        return indices

    def frame_size(n: int, height: int, width: int) -> tuple[int, int] | None:
        try:
            size = resize_size(cfg, n, height, width)  # checked before decoding on both paths
        except ValueError as exc:  # smart_resize's aspect-ratio refusal
            raise InvalidInput(f"video frames cannot be resized: {exc}", field=field) from None
        return None if gpu is not None else size  # the GPU path resizes on its device

    if gpu is None or jobs is None or not _streams_frames(gpu):
        buffer = gpu.host_buffer if gpu is not None else None
        return decode_video(part.data, part.mime_type, limits, sampler, field, frame_size, buffer)

    def buffer(n: int, height: int, width: int):  # a FramesJob: each frame goes up as soon as it is decoded
        jobs.append(gpu.frames_job(n, height, width))
        return jobs[0].host

    return decode_video(part.data, part.mime_type, limits, sampler, field, frame_size, buffer,
                        slot_written=lambda k: jobs[0].ready(k))


def _streams_frames(gpu) -> bool:
    from vlm_service.processor import gpu_video

    return gpu_video.STREAM_FRAMES and hasattr(gpu, "frames_job")


def expand_video_text(text: str, items: list[PreparedVisual]) -> str:
    """Qwen3-VL: put each video's per-group timestamps and vision markers in place of its `<|video_pad|>`."""
    videos = iter([it for it in items if it.kind == "video"])

    def repl(_match) -> str:
        item = next(videos, None)
        if item is None or not item.timing.group_times:
            return VIDEO_PAD
        return "".join(f"<{t:.1f} seconds><|vision_start|>{VIDEO_PAD}<|vision_end|>"
                       for t in item.timing.group_times)

    return re.sub(re.escape(VIDEO_PAD), repl, text)


def expand_pads(ids: list[int], items: list[PreparedVisual], pad_ids: dict[str, int],
                merge: int) -> tuple[list[int], list[list[VisualRun]]]:
    """Each image / video pad token -> its run of pads. Returns the ids and each item's runs (offsets in them)."""
    queues = {kind: [(i, r) for i, it in enumerate(items) if it.kind == kind for r in it.runs(merge)]
              for kind in ("image", "video")}
    by_id = {pad_ids[kind]: kind for kind in queues}
    want = {k: len(q) for k, q in queues.items()}
    have = {k: sum(1 for t in ids if t == pad_ids[k]) for k in queues}
    if have != want:
        raise InvalidInput(f"the chat template produced {have['image']} image and {have['video']} video "
                           f"placeholders for {want['image']} image and {want['video']} video runs", field="messages")
    cursors = {k: iter(q) for k, q in queues.items()}
    out: list[int] = []
    runs: list[list[VisualRun]] = [[] for _ in items]
    for token in ids:
        kind = by_id.get(token)
        if kind is None:
            out.append(token)
            continue
        item, (t, h, w, interval) = next(cursors[kind])
        runs[item].append(VisualRun(len(out), t, h, w, interval))
        out.extend([token] * (t * h * w))
    return out, runs
