"""Video frames -> pixel_values and grid_thw, step for step what transformers' Qwen video processors do.

resize every frame to the family's size (video_config.resize_size) as torchvision resizes a uint8 tensor on the
CPU (torch's native uint8 bicubic + antialias kernel) -> normalize with the fused rescale
((x - mean/rescale) / (std/rescale), float32) -> pad the frame count to a multiple of temporal_patch_size with the
last frame -> patchify into [grid_t * grid_h * grid_w, C * tp * p * p], rows ordered frame group, merge-block row,
merge-block col, in-block row, in-block col (the image layout, with real frames in the temporal slot).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vlm_service.processor.video_config import VideoConfig, resize_size


def preprocess_video(frames: np.ndarray, cfg: VideoConfig, out_dtype: torch.dtype = torch.float32,
                     pin_memory: bool = False, resized: bool = False) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """frames [n, H, W, 3] uint8 -> (pixel_values [t*gh*gw, 3*tp*p*p], grid_thw (t, gh, gw)).

    resized: the frames are already at resize_size (the decoder resized them one by one)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [n, 3, H, W] uint8
    if resized:
        height, width = video.shape[2], video.shape[3]
    else:
        height, width = resize_size(cfg, video.shape[0], video.shape[2], video.shape[3])
        video = resize_frames(video, height, width)
    values = _normalize(video, cfg)
    out = _patchify(values, cfg)
    if out_dtype != torch.float32 or pin_memory:
        out = out.to(out_dtype).pin_memory() if pin_memory else out.to(out_dtype)
    grid = (out.shape[0] // ((height // cfg.patch_size) * (width // cfg.patch_size)),
            height // cfg.patch_size, width // cfg.patch_size)
    return out, grid


def resize_frames(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's resize of a [n, 3, H, W] uint8 tensor on the CPU with bicubic + antialias: torch's native
    uint8 kernel (torchvision casts to float only off the CPU), on contiguous NCHW as transformers hands it over."""
    if tuple(video.shape[-2:]) == (height, width):
        return video
    return F.interpolate(video.contiguous(), size=(height, width), mode="bicubic", align_corners=False,
                         antialias=True)


def _normalize(video: torch.Tensor, cfg: VideoConfig) -> torch.Tensor:
    """transformers' fused rescale + normalize on float32: (x - mean * 1/r) / (std * 1/r)."""
    x = video.to(torch.float32)
    if cfg.do_rescale and cfg.do_normalize:
        mean = torch.tensor(cfg.image_mean) * (1.0 / cfg.rescale_factor)
        std = torch.tensor(cfg.image_std) * (1.0 / cfg.rescale_factor)
        return x.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])
    if cfg.do_normalize:
        return x.sub_(torch.tensor(cfg.image_mean)[None, :, None, None]).div_(
            torch.tensor(cfg.image_std)[None, :, None, None])
    return x * cfg.rescale_factor if cfg.do_rescale else x


def _patchify(values: torch.Tensor, cfg: VideoConfig) -> torch.Tensor:
    """[n, C, H, W] float32 -> [t*gh*gw, C*tp*p*p] (frames padded with the last to a multiple of tp)."""
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -values.shape[0] % tp:
        values = torch.cat([values, values[-1:].expand(pad, -1, -1, -1)])
    n, c, h, w = values.shape
    gt, gh, gw = n // tp, h // p, w // p
    x = values.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [gt, gh/m, gw/m, m, m, C, tp, p, p]
    return x.reshape(gt * gh * gw, c * tp * p * p).contiguous()
