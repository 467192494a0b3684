"""Video frames -> pixel_values and grid_thw, step for step what transformers' Qwen video processors do.

resize every frame to the family's size (video_config.resize_size) as torchvision resizes a uint8 tensor on the
CPU (torch's native uint8 bicubic + antialias kernel) -> normalize with the fused rescale
((x - mean/rescale) / (std/rescale), float32; looked up per uint8 value, bit-identical) -> pad the frame count
to a multiple of temporal_patch_size with the last frame -> patchify into [grid_t * grid_h * grid_w, C * tp * p * p], rows ordered frame group, merge-block row,
merge-block col, in-block row, in-block col (the image layout, with real frames in the temporal slot).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from vlm_service.processor.video_config import VideoConfig, resize_size


def preprocess_video(frames: np.ndarray, cfg: VideoConfig, out_dtype: torch.dtype = torch.float32,
                     pin_memory: bool = False, resized: bool = False) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """frames [n, H, W, 3] uint8 -> (pixel_values [t*gh*gw, 3*tp*p*p], grid_thw (t, gh, gw)).

    resized: the frames are already at resize_size (the decoder resized them one by one). out_dtype / pin_memory:
    the values are written once, in the dtype (and pinned memory) the model wants (see vision.preprocess_image)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [n, 3, H, W] uint8
    if resized:
        height, width = video.shape[2], video.shape[3]
    else:
        height, width = resize_size(cfg, video.shape[0], video.shape[2], video.shape[3])
        video = resize_frames(video, height, width)
    pixels = video.contiguous().numpy()  # [n, 3, h, w] uint8
    if pad := -pixels.shape[0] % cfg.temporal_patch_size:  # Qwen's patchify repeats the last frame
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
    lut = _value_table(cfg.do_rescale, cfg.rescale_factor, cfg.do_normalize, tuple(cfg.image_mean),
                       tuple(cfg.image_std), out_dtype)
    values = np.empty(pixels.shape, dtype=lut.dtype)
    for k in range(pixels.shape[0]):  # per frame and channel: contiguous planes (a strided take is ~10x slower)
        for c in range(pixels.shape[1]):
            np.take(lut[c], pixels[k, c], out=values[k, c], mode="clip")  # uint8 indices: always in range
    out, target, grid = _patch_layout(values, cfg, out_dtype, pin_memory)
    np.copyto(target, _patch_view(values, cfg))
    return out, grid


def resize_frames(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's resize of a [n, 3, H, W] uint8 tensor on the CPU with bicubic + antialias: torch's native
    uint8 kernel (torchvision casts to float only off the CPU). The values do not depend on the memory layout, so
    frames straight from the decoder (channels-last) are not copied first."""
    if tuple(video.shape[-2:]) == (height, width):
        return video
    return F.interpolate(video, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


@functools.lru_cache(maxsize=16)
def _value_table(do_rescale: bool, rescale_factor: float, do_normalize: bool, mean: tuple, std: tuple,
                 out_dtype: torch.dtype) -> np.ndarray:
    """[C, 256]: what transformers' video rescale + normalize make of each uint8 value, computed with its float32
    ops (fused: (x - mean / r) / (std / r)), so a lookup is bit-identical; other dtypes: their bits, as int16."""
    x = torch.arange(256, dtype=torch.float32).expand(len(mean), 256)
    if do_rescale and do_normalize:
        m = torch.tensor(mean) * (1.0 / rescale_factor)
        s = torch.tensor(std) * (1.0 / rescale_factor)
        x = (x - m[:, None]) / s[:, None]
    elif do_normalize:
        x = (x - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    elif do_rescale:
        x = x * rescale_factor
    x = x.contiguous()
    return x.numpy() if out_dtype == torch.float32 else x.to(out_dtype).view(torch.int16).numpy()


def _patch_view(values: np.ndarray, cfg: VideoConfig) -> np.ndarray:
    """[n, C, H, W] -> the view [gt, gh/m, gw/m, m, m, C, tp, p, p] whose row-major order is the patch layout."""
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    n, c, h, w = values.shape
    x = values.reshape(n // tp, tp, c, h // p // m, m, p, w // p // m, m, p)
    return x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)


def _patch_layout(values: np.ndarray, cfg: VideoConfig, out_dtype: torch.dtype, pin_memory: bool):
    """(out [t*gh*gw, C*tp*p*p] empty, a numpy view of it shaped like _patch_view, grid (t, gh, gw))."""
    tp, p = cfg.temporal_patch_size, cfg.patch_size
    n, c, h, w = values.shape
    grid = (n // tp, h // p, w // p)
    out = torch.empty((grid[0] * grid[1] * grid[2], c * tp * p * p), dtype=out_dtype, pin_memory=pin_memory)
    flat = out.numpy() if out_dtype == torch.float32 else out.view(torch.int16).numpy()
    return out, flat.reshape(_patch_view(values, cfg).shape), grid
