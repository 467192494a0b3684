"""Video settings of a checkpoint and the frame-sampling / resize rules of its transformers video processor.

Two families (the checkpoint's model_type -> models/registry.py's entry -> its family, so qwen3_vl_moe gets
Qwen3-VL's rules; the rules themselves live in family_rules.py):
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
from dataclasses import dataclass
from pathlib import Path

from vlm_service.processor.family_rules import ProcessorFamily, group_timestamps  # noqa: F401 (re-exported)
from vlm_service.processor.family_rules import family_by_name, family_of_model_type, family_of_processor_class

DEFAULT_FPS = 2.0


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
        family_by_name(self.family)  # ValueError for an unknown family
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.fps <= 0 or not 0 < self.min_frames <= self.max_frames:
            raise ValueError("video fps must be > 0 and 0 < min_frames <= max_frames")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def rules(self) -> ProcessorFamily:
        """The family's sampling / resize rules and position function (processor/family_rules.py)."""
        return family_by_name(self.family)

    @classmethod
    def from_dict(cls, d: dict, family: str, tokens_per_second: int = 2) -> "VideoConfig":
        rules = family_by_name(family)
        lo, hi, size = rules.video_min_pixels, rules.video_max_pixels, d.get("size") or {}
        if rules.video_reads_min_max_pixels:  # Qwen2VLVideoProcessor: min_pixels / max_pixels override size
            lo = d.get("min_pixels") or size.get("shortest_edge") or lo
            hi = d.get("max_pixels") or size.get("longest_edge") or hi
        else:  # Qwen3VLVideoProcessor reads size only
            lo, hi = size.get("shortest_edge") or lo, size.get("longest_edge") or hi
        patch, mean, std, max_tokens = rules.patch_size, rules.image_mean, rules.image_std, rules.max_video_tokens
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
        family = _family_of(model_cfg, d)
        # Qwen2_5_VLVisionConfig's default is 4 (the hub checkpoints say 2)
        tps = (model_cfg.get("vision_config") or {}).get("tokens_per_second") or 4
        return cls.from_dict(d, family, tps)


def _family_of(model_cfg: dict, d: dict) -> str:
    """The family of config.json's model_type, else of the processor class (directories without config.json,
    e.g. processor tests), else Qwen3-VL's (the VideoConfig default)."""
    rules = (family_of_model_type(str(model_cfg.get("model_type")))
             or family_of_processor_class(str(d.get("processor_class", ""))))
    return rules.name if rules else "qwen3_vl"


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


# ---- the sampling rules (the family's, family_rules.py) ------------------------------------------------------------

def num_sampled_frames(cfg: VideoConfig, total: int, src_fps: float, fps: float, max_frames: int) -> int:
    """How many frames the family's sample_frames keeps from `total` source frames at `src_fps`."""
    return cfg.rules.num_sampled_frames(cfg, total, src_fps, fps, max_frames)


def sample_indices(cfg: VideoConfig, total: int, src_fps: float, fps: float, max_frames: int) -> list[int]:
    """Source frame indices (presentation order) the transformers video processor of the family would keep."""
    return cfg.rules.sample_indices(cfg, total, src_fps, fps, max_frames)


def resize_size(cfg: VideoConfig, num_frames: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) every frame is resized to, as the family's video processor's resize computes it."""
    return cfg.rules.resize_size(cfg, num_frames, height, width)
