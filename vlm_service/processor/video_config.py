"""Video settings of a checkpoint and the frame-sampling / resize rules of its transformers video processor.

Two families (keyed on the checkpoint's model_type, so qwen3_vl_moe inherits Qwen3-VL's rules):
- "qwen2_5_vl" follows Qwen2VLVideoProcessor: the sampled frame count is floored to a multiple of
  temporal_patch_size, indices are arange(0, total, total / n), max_pixels bounds each frame;
- "qwen3_vl" follows Qwen3VLVideoProcessor: indices are linspace(0, total - 1, n) rounded, the count is padded to a
  multiple of temporal_patch_size by repeating the last frame, and max_pixels bounds the whole clip (t * h * w).
Both sample `fps` frames per second of the source (2.0 unless the request or the checkpoint says otherwise), at least
min_frames and at most max_frames. Settings load as transformers loads them: processor_config.json's
"video_processor", else video_preprocessor_config.json, else preprocessor_config.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm_service.processor.vision import CLIP_MEAN, CLIP_STD

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
DEFAULT_FPS = 2.0
# the transformers class defaults of each family: (patch, min_pixels, max_pixels, mean, std, max_video_tokens)
_FAMILY_DEFAULTS = {
    "qwen2_5_vl": (14, 128 * 28 * 28, 28 * 28 * 768, CLIP_MEAN, CLIP_STD, 128000),
    "qwen3_vl": (16, 128 * 32 * 32, 32 * 32 * 768, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 768),
}


def video_family(model_type: str) -> str:
    """The video rules a model_type follows: qwen3_vl* -> qwen3_vl (dense and MoE), anything else -> qwen2_5_vl."""
    return "qwen3_vl" if model_type.startswith("qwen3") else "qwen2_5_vl"


@dataclass(frozen=True)
class VideoConfig:
    """The video processor settings of one checkpoint (see the module docstring for where they come from)."""

    family: str = "qwen3_vl"
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 32 * 32
    max_pixels: int = 32 * 32 * 768
    fps: float = DEFAULT_FPS
    min_frames: int = 4
    max_frames: int = 768
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768
    tokens_per_second: int = 2  # Qwen2.5-VL: temporal MRoPE ids per second of video (config.json vision_config)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"video family must be one of {FAMILIES}, not {self.family!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.fps <= 0 or not 0 < self.min_frames <= self.max_frames:
            raise ValueError("video fps must be > 0 and 0 < min_frames <= max_frames")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, d: dict, family: str, tokens_per_second: int = 2) -> "VideoConfig":
        patch, lo, hi, mean, std, max_tokens = _FAMILY_DEFAULTS[family]
        size = d.get("size") or {}
        if family == "qwen2_5_vl":  # Qwen2VLVideoProcessor: min_pixels / max_pixels override size
            lo = d.get("min_pixels") or size.get("shortest_edge") or lo
            hi = d.get("max_pixels") or size.get("longest_edge") or hi
        else:  # Qwen3VLVideoProcessor reads size only
            lo, hi = size.get("shortest_edge") or lo, size.get("longest_edge") or hi
        kw = dict(family=family, patch_size=patch, min_pixels=int(lo), max_pixels=int(hi), image_mean=mean,
                  image_std=std, max_video_tokens=max_tokens, tokens_per_second=int(tokens_per_second))
        for key in ("patch_size", "temporal_patch_size", "merge_size", "min_frames", "max_frames", "rescale_factor",
                    "do_rescale", "do_normalize", "cap_pixels_per_frame", "max_video_tokens"):
            if d.get(key) is not None:
                kw[key] = d[key]
        if d.get("fps"):
            kw["fps"] = float(d["fps"])
        for key in ("image_mean", "image_std"):
            if d.get(key) is not None:
                kw[key] = tuple(d[key]) if isinstance(d[key], (list, tuple)) else (d[key],) * 3
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> "VideoConfig":
        model_dir = Path(model_dir)
        model_cfg = _read(model_dir / "config.json") or {}
        d = _video_processor_dict(model_dir)
        family = video_family(str(model_cfg.get("model_type") or _type_of_processor(d)))
        # Qwen2_5_VLVisionConfig's default is 4 (the hub checkpoints say 2)
        tps = (model_cfg.get("vision_config") or {}).get("tokens_per_second") or 4
        return cls.from_dict(d, family, tps)


def _type_of_processor(d: dict) -> str:
    """A model_type from a processor config alone (directories without config.json, e.g. processor tests)."""
    return "qwen2_5_vl" if "Qwen2_5" in str(d.get("processor_class", "")) else "qwen3_vl"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _video_processor_dict(model_dir: Path) -> dict:
    nested = _read(model_dir / "processor_config.json") or {}
    if "video_processor" in nested:
        return nested["video_processor"]
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        d = _read(model_dir / name)
        if d is not None:
            return d
    return {}


# ---- the sampling rules ------------------------------------------------------------------------------------------

def num_sampled_frames(cfg: VideoConfig, total: int, src_fps: float, fps: float, max_frames: int) -> int:
    """How many frames the family's sample_frames keeps from `total` source frames at `src_fps`."""
    max_frames = min(max_frames, cfg.max_frames)
    if cfg.family == "qwen2_5_vl":
        tp = cfg.temporal_patch_size
        cap = math.floor(min(max_frames, total) / tp) * tp
        n = min(max(total / src_fps * fps, cfg.min_frames), cap, total)
        return math.floor(n / tp) * tp
    n = int(total / src_fps * fps)
    return min(max(n, cfg.min_frames), max_frames, total)


def sample_indices(cfg: VideoConfig, total: int, src_fps: float, fps: float, max_frames: int) -> list[int]:
    """Source frame indices (presentation order) the transformers video processor of the family would keep."""
    n = num_sampled_frames(cfg, total, src_fps, fps, max_frames)
    if n <= 0:
        return []
    if cfg.family == "qwen2_5_vl":
        import torch

        return torch.arange(0, total, total / n).int().tolist()  # Qwen2VLVideoProcessor.sample_frames' own rule
    return np.linspace(0, total - 1, n).round().astype(int).tolist()


def resize_size(cfg: VideoConfig, num_frames: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) every frame is resized to, as the family's video processor's resize computes it."""
    max_pixels = cfg.max_pixels
    if cfg.family == "qwen2_5_vl":
        if cfg.cap_pixels_per_frame:
            total = int(cfg.max_video_tokens * cfg.factor * cfg.factor * 0.9)
            max_pixels = max(min(max_pixels, total * cfg.temporal_patch_size // num_frames),
                             int(cfg.min_pixels * 1.05))
        from vlm_service.processor.vision import smart_resize

        return smart_resize(height, width, cfg.factor, cfg.min_pixels, max_pixels)
    if cfg.cap_pixels_per_frame:
        per_frame = max(min(cfg.max_video_tokens * cfg.factor * cfg.factor, cfg.max_pixels // num_frames),
                        int(cfg.min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    return _clip_smart_resize(num_frames, height, width, cfg.temporal_patch_size, cfg.factor, cfg.min_pixels,
                              max_pixels)


def _clip_smart_resize(t: int, height: int, width: int, tf: int, factor: int, min_pixels: int,
                       max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's smart_resize: the pixel budget covers all t frames."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is over 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(t / tf) * tf
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((t * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (t * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def group_timestamps(indices: list[int], src_fps: float, tp: int) -> list[float]:
    """Qwen3-VL: one timestamp per temporal group, the mean of its first and last frame's time (indices padded
    with the last one to a multiple of tp, as Qwen3VLProcessor._calculate_timestamps does)."""
    idx = list(indices) + [indices[-1]] * (-len(indices) % tp)
    times = [i / src_fps for i in idx]
    return [(times[i] + times[i + tp - 1]) / 2 for i in range(0, len(times), tp)]

