"""Video frames preprocessed as torch ops on the model's device (`--preprocess-device cuda`, and `auto` for videos).

The decoder hands over the sampled RGB frames at their decoded size (no host resize), written straight into one
pinned host buffer [n, H, W, 3] uint8; here they are uploaded once (non_blocking, on this thread's CUDA stream) and
- resized as transformers' Qwen video processors resize a uint8 tensor that lives on a CUDA device: torchvision's
  resize casts to float32, runs interpolate(bicubic, antialias=True, align_corners=False) on the contiguous
  [n, 3, H, W] stack, clamps to [0, 255], rounds half to even and casts back to uint8 (it only uses torch's native
  uint8 kernel on the CPU). Same ops, same device, same layout: on the GPU these are transformers' own levels;
- rescaled + normalised by the CPU path's value table (video_preprocess._value_table: transformers' fused float32
  (x - mean/r) / (std/r) of every uint8 level), so equal levels give bit-equal values, in the tower's dtype;
- padded to a multiple of temporal_patch_size with the last frame and laid out as video_preprocess lays them out
  ([t * gh * gw, C * tp * p * p], rows: frame group, merge-block row, merge-block col, in-block row, in-block col).

Frames may also go up while the video decodes (FramesJob, STREAM_FRAMES): each sampled frame is uploaded and
resized on its own as soon as the decoder has written it, so after the last frame only its own upload and resize,
the normalise and the layout are left. The resize of one frame equals its slice of the stacked resize (each
output pixel is computed from its own plane alone; tests/processor/test_gpu_video_stream.py holds them equal).

The functions run on CPU tensors as well, which is how the CPU tests hold them against video_preprocess. There the
reference is torch's uint8 kernel (what transformers runs on the CPU), which rounds and clamps to uint8 between its
horizontal and vertical passes; this path keeps the intermediate in float32. Measured on the test clips
(tests/processor/test_gpu_video.py): 15-22 % of the levels differ by one, about 1e-4 of them by more (up to 13, at
hard edges where the first pass overshoots 0 or 255 and the uint8 kernel clips it). That is the difference between
transformers' own CPU and CUDA video processing; run in two passes with that rounding, this path's filter is within
2 levels of the uint8 kernel (the same weights and pixel centres; the rest is its fixed-point arithmetic).
"""

from __future__ import annotations

import contextlib
import logging
import threading

import numpy as np
import torch
import torch.nn.functional as F

from vlm_service.processor.gpu_ops import ThreadStreams
from vlm_service.processor.video_config import VideoConfig, resize_size
from vlm_service.processor.video_preprocess import _value_table, preprocess_video

log = logging.getLogger(__name__)
# frames uploaded + resized one by one while the video decodes (FramesJob); off: all at once after the decode, as
# before (benchmarks/sweep_video_threads.py's A/B)
STREAM_FRAMES = True


def video_value_table(cfg: VideoConfig, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """[C, 256] in `dtype` on `device`: the CPU path's rescale + normalise of every uint8 level."""
    table = torch.from_numpy(_value_table(cfg.do_rescale, cfg.rescale_factor, cfg.do_normalize,
                                          tuple(cfg.image_mean), tuple(cfg.image_std), dtype).copy())
    return (table if dtype == torch.float32 else table.view(dtype)).to(device)


def resize_levels(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [n, 3, H, W] (any layout, any device) -> uint8 [n, 3, h, w]: torchvision's off-CPU uint8 resize
    (float32 bicubic + antialias, clamp, round half to even). Unchanged size: the frames as they are."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    x = frames.to(torch.float32, memory_format=torch.contiguous_format)  # transformers' stack is contiguous NCHW
    x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(0, 255).round_().to(torch.uint8)


def pad_frames(levels: torch.Tensor, temporal_patch_size: int) -> torch.Tensor:
    """[n, ...] -> [n + pad, ...]: the last frame repeated up to a multiple of temporal_patch_size (Qwen's patchify)."""
    if pad := -levels.shape[0] % temporal_patch_size:
        levels = torch.cat([levels, levels[-1:].expand(pad, *levels.shape[1:])])
    return levels


def normalize_levels(levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 [n, C, h, w] -> [n, C, h, w] in table's dtype: table[c, levels[:, c]] (one channel plane at a time, so
    the int32 index is a third of the frames' size, not an int64 copy of all of them)."""
    out = torch.empty(levels.shape, dtype=table.dtype, device=levels.device)
    for c in range(levels.shape[1]):
        index = levels[:, c].reshape(-1).to(torch.int32)
        out[:, c] = table[c].index_select(0, index).view(levels[:, c].shape)
    return out


def patchify_video(values: torch.Tensor, cfg: VideoConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[n, C, h, w] (n a multiple of tp; h, w multiples of patch * merge) -> ([t*gh*gw, C*tp*p*p], (t, gh, gw)) in
    video_preprocess's row order; one strided copy."""
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    n, c, h, w = values.shape
    grid = (n // tp, h // p, w // p)
    x = values.view(n // tp, tp, c, h // p // m, m, p, w // p // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [t, gh/m, gw/m, m, m, C, tp, p, p]
    out = torch.empty((grid[0] * grid[1] * grid[2], c * tp * p * p), dtype=values.dtype, device=values.device)
    out.view(x.shape).copy_(x)
    return out, grid


def preprocess_video_frames(frames: torch.Tensor, cfg: VideoConfig, table: torch.Tensor
                            ) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [n, 3, H, W] on any device -> (pixel_values [t*gh*gw, 3*tp*p*p] in table's dtype there, grid_thw).
    Raises ValueError where smart_resize refuses the frame shape (as video_preprocess does)."""
    n, _, height, width = frames.shape
    size = resize_size(cfg, n, height, width)
    levels = pad_frames(resize_levels(frames, size), cfg.temporal_patch_size)
    return patchify_video(normalize_levels(levels, table), cfg)


class GpuVideoPreprocessor:
    """Decoded frames [n, H, W, 3] uint8 (host) -> (pixel_values on `device` in `dtype`, grid_thw).

    host_buffer(n, h, w) is the array the decoder writes the kept frames into (pinned on CUDA, so the upload is
    one asynchronous copy). Where the device ops fail (out of memory, a downscale beyond the CUDA antialias
    kernel's limits) the video takes the host path, logged, and is copied up. Each calling thread has its own
    CUDA stream and synchronises only that stream before handing the tensor over (model_runner records the engine
    stream's use of it). On a CPU device the same code runs without streams or pinned memory (the CPU tests)."""

    def __init__(self, cfg: VideoConfig, device: torch.device | str, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.cuda = self.device.type == "cuda"
        self.table = video_value_table(cfg, dtype, self.device)
        self._streams = ThreadStreams(self.device)
        self._warned = False
        if self.cuda:
            self._warm_up()

    def host_buffer(self, n: int, height: int, width: int) -> np.ndarray:
        """An empty uint8 [n, height, width, 3] array for the decoder to fill (a view of pinned memory on CUDA)."""
        return torch.empty((n, height, width, 3), dtype=torch.uint8, pin_memory=self.cuda).numpy()

    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """frames [n, H, W, 3] uint8 -> (pixel_values [t*gh*gw, 3*tp*p*p] on the device, (t, gh, gw))."""
        host = torch.from_numpy(np.ascontiguousarray(frames))
        with self._streams.current() as stream:
            try:
                video = host.to(self.device, non_blocking=self.cuda).permute(0, 3, 1, 2)  # [n, 3, H, W] view
                out = preprocess_video_frames(video, self.cfg, self.table)
            except RuntimeError as exc:  # e.g. out of memory, or a downscale beyond the CUDA aa kernel's limits
                self._warn(exc)
                values, grid = preprocess_video(frames, self.cfg, self.dtype, pin_memory=self.cuda)
                out = values.to(self.device, non_blocking=self.cuda), grid
            if stream is not None:
                stream.synchronize()  # this thread's stream only; also: the pinned buffer is free once it returns
        return out

    def frames_job(self, n: int, height: int, width: int) -> "FramesJob":
        """A FramesJob for n decoded frames of height x width (made on the thread that will call its finish())."""
        return FramesJob(self, n, height, width)

    def _warn(self, exc: Exception) -> None:
        """The first failure at WARNING, later ones at DEBUG (a client sending odd videos must not flood)."""
        log.log(logging.DEBUG if self._warned else logging.WARNING,
                "video preprocessing on %s failed (%s); this video is preprocessed on the host", self.device, exc)
        self._warned = True

    def _warm_up(self) -> None:
        """A small clip's frames through the device ops now (kernels loaded before the first user's video), and
        the largest difference from the CPU path (transformers' CPU processing) logged."""
        y, x = np.mgrid[0:72, 0:120]
        smooth = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)  # a photo's smoothness, no wrap
        frames = np.stack([smooth] * (self.cfg.temporal_patch_size + 1))
        got, grid = self(frames)
        want, _ = preprocess_video(frames, self.cfg, self.dtype)
        diff = (got.float().cpu() - want.float()).abs().max().item()
        log.info("video preprocessing on %s (%s): warm-up %s max |diff| vs the CPU path %.4f", self.device,
                 str(self.dtype).removeprefix("torch."), grid, diff)


class FramesJob:
    """One video's frames going to the device while it decodes.

    host: the pinned [n, H, W, 3] uint8 buffer the decoder writes into; ready(k) (from the decode threads, once
    slot k is written) queues slot k's upload and resize on the stream of the thread that made the job (the
    preprocessing thread); finish() (on that thread) pads, normalises and lays out the resized frames and
    synchronises. A device failure (e.g. out of memory) in any ready() sends the whole video through the
    preprocessor's batch path (and its host fallback) at finish(), from the host buffer, which holds every frame."""

    def __init__(self, pre: GpuVideoPreprocessor, n: int, height: int, width: int):
        self.pre, self.host = pre, pre.host_buffer(n, height, width)
        self.failed: BaseException | None = None
        self.levels, self.stream = None, None
        self._lock = threading.Lock()  # failed is set by one decode thread, read by the others
        try:
            self.size = resize_size(pre.cfg, n, height, width)
            with pre._streams.current() as stream:
                self.stream = stream
                self.levels = torch.empty((n, 3, *self.size), dtype=torch.uint8, device=pre.device)
        except (RuntimeError, ValueError) as exc:  # no room on the device / smart_resize's refusal: batch path
            self.failed = exc

    def ready(self, k: int) -> None:
        """Slot k of host is written: upload and resize it (queued, not waited for)."""
        if self.failed is not None:
            return
        try:
            with self._on_stream():
                frame = torch.from_numpy(self.host[k]).to(self.pre.device, non_blocking=self.pre.cuda)
                self.levels[k:k + 1] = resize_levels(frame.permute(2, 0, 1)[None], self.size)
        except RuntimeError as exc:
            with self._lock:
                self.failed = self.failed or exc

    def finish(self) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(pixel_values [t*gh*gw, 3*tp*p*p] on the device, (t, gh, gw)), as GpuVideoPreprocessor(host) gives."""
        if self.failed is None:
            try:
                with self.pre._streams.current() as stream:
                    levels = pad_frames(self.levels, self.pre.cfg.temporal_patch_size)
                    out = patchify_video(normalize_levels(levels, self.pre.table), self.pre.cfg)
                    if stream is not None:
                        stream.synchronize()  # also: the pinned buffer is free once it returns
                return out
            except RuntimeError as exc:
                self.failed = exc
        self.pre._warn(self.failed)
        if self.stream is not None:
            self.stream.synchronize()  # no upload of the buffer still in flight when the batch path reuses it
        return self.pre(self.host)

    def _on_stream(self):
        if self.stream is None:
            return contextlib.nullcontext()
        return _stream_context(self.pre.device, self.stream)


@contextlib.contextmanager
def _stream_context(device: torch.device, stream):
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield
