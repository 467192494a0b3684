"""The image preprocessing of vision.py as plain torch ops, for decoded pixels that already live on the GPU.

uint8 [C, H, W] -> resize to the smart_resize grid -> rescale + normalise -> patch layout
[grid_h * grid_w, C * temporal_patch * patch * patch] (rows in 2x2 merge-block order), in the tower's dtype.

Nothing here is CUDA-specific: the same functions run on CPU tensors, which is how the CPU tests check them
against the PIL path (tests/processor/test_gpu_ops.py).

How close to PIL: PIL's bicubic resample runs in two separable passes (horizontal, then vertical), each rounding to
uint8. torch's antialiased bicubic interpolate uses PIL's filter (Keys' cubic with a = -0.5, support scaled by the
downscale factor, the same pixel centres), so `resize_like_pil` runs the two passes as two interpolate calls on
float32 and rounds after each like PIL does. What is left is the float32 sum against PIL's 22-bit fixed-point one:
a value landing within ~1e-5 of a .5 boundary may round the other way, i.e. a few pixels in ten thousand are off by
one level (measured on CPU: tests/processor/test_gpu_ops.py). Rounding to uint8 also means rescale + normalise can
use the CPU path's own value table, so equal resized pixels give bit-equal pixel values.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F

from vlm_service.processor.vision import ImageConfig, _value_table, smart_resize


def resize_like_pil(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (or integral float) [C, H, W] -> float32 [C, h, w] holding integers in [0, 255]: PIL's bicubic
    resize to size = (h, w), within one level on rare pixels (see the module docstring). Returns the input as
    float32 when the size is unchanged (PIL then copies the image as is)."""
    x = pixels.to(torch.float32).contiguous()[None]  # [1, C, H, W]; host uploads arrive as an HWC view
    src_h, src_w = x.shape[-2:]
    dst_h, dst_w = size
    # PIL resizes very tall images vertically first (see vision.resize_banded); the rounding in between makes the
    # order matter at the level of single values
    vertical_first = src_h > src_w * 100 and dst_h < src_h
    passes = [(src_h, dst_w), (dst_h, dst_w)] if not vertical_first else [(dst_h, src_w), (dst_h, dst_w)]
    for h, w in passes:
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
            x = torch.floor(x + 0.5).clamp_(0, 255)  # PIL's clip8 of its rounded fixed-point sum
    return x[0]


def value_table(cfg: ImageConfig, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """[C, 256] in `dtype` on `device`: rescale + normalise of every uint8 value, the CPU path's own table
    (vision._value_table), so a lookup gives bit-for-bit the CPU path's values."""
    table = torch.from_numpy(_value_table(cfg.do_rescale, cfg.rescale_factor, cfg.do_normalize, cfg.image_mean,
                                          cfg.image_std, dtype).copy())
    if dtype != torch.float32:
        table = table.view(dtype)  # the table holds dtype's bits as int16
    return table.to(device)


def normalize(levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """levels [C, H, W] (integers 0..255, any dtype) -> [C, H, W] in table's dtype: table[c, levels[c]]."""
    channels, height, width = levels.shape
    index = levels.reshape(channels, -1).to(torch.int64)
    return torch.gather(table, 1, index).view(channels, height, width)


def patchify(values: torch.Tensor, cfg: ImageConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[C, H, W] (H, W multiples of patch * merge) -> ([grid_h * grid_w, C * tp * p * p], (1, grid_h, grid_w)):
    vision.py's layout. Rows walk merge blocks (block row, block col, in-block row, in-block col), each row holds
    channel, temporal copy (a still image repeated), patch row, patch col. One strided copy."""
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    channels, height, width = values.shape
    grid_h, grid_w = height // p, width // p
    x = values.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, p, p]
    x = x.unsqueeze(5).expand(*x.shape[:5], tp, p, p)
    out = torch.empty((grid_h * grid_w, channels * tp * p * p), dtype=values.dtype, device=values.device)
    out.view(x.shape).copy_(x)
    return out, (1, grid_h, grid_w)


def preprocess_pixels(pixels: torch.Tensor, cfg: ImageConfig, table: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Decoded RGB uint8 [3, H, W] (on any device) -> (pixel_values [gh*gw, C*tp*p*p] in table's dtype on that
    device, grid_thw): vision.preprocess_image's steps, with the resize as `resize_like_pil`."""
    _, height, width = pixels.shape
    size = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    levels = resize_like_pil(pixels, size)
    return patchify(normalize(levels, table), cfg)


class ThreadStreams:
    """One CUDA stream per calling thread (the preprocessing pool's), so one request's upload and kernels overlap
    another's; on a CPU device there are no streams (the CPU tests run the same code)."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self._local = threading.local()

    @contextlib.contextmanager
    def current(self):
        """This thread's stream made current (yields it), or None on a CPU device."""
        if not self.cuda:
            yield None
            return
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            yield stream
