"""The processor rules of each model family, as one frozen value per family (models/registry.py's architecture
entries reach theirs by model_type; code asks for a family here or through the registry, never compares names).

A family is what the checkpoint's transformers processors do:
- image settings: patch size, mean / std, the processor class, the public checkpoints' pixel limits;
- video settings: the video processor's class defaults, whether min_pixels / max_pixels override `size`;
- the frame-sampling and resize rules (num_sampled_frames, sample_indices, resize_size);
- the position function (`video_timing`): where a video's time goes, as temporal MRoPE spacing (Qwen2.5-VL's
  second_per_grid_t * tokens_per_second) or as timestamp text in the prompt with one pad run per frame group
  (Qwen3-VL).
The functions take a video_config.VideoConfig (`cfg`, read through the VideoSettings protocol below, so this module
does not import video_config) and the source clip's frame count / fps / size. Which checkpoints a family serves is
its `model_types` (config.json "model_type"), as transformers picks processors by model_type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from vlm_service.processor.vision import CLIP_MEAN, CLIP_STD, smart_resize



class VideoSettings(Protocol):
    """What the rules read of a checkpoint's video settings (processor/video_config.VideoConfig provides it)."""

    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int
    tokens_per_second: int

    @property
    def factor(self) -> int: ...


HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VideoTiming:
    """How a prepared video lies in the prompt: group_times (seconds per temporal group) become timestamp text
    and split the video into one pad run per group; time_interval spaces the groups on the temporal MRoPE axis."""

    group_times: tuple[float, ...] = ()
    time_interval: int = 1
    run_per_group: bool = False


@dataclass(frozen=True)
class ProcessorFamily:
    """Everything the processor does differently per family (see the module docstring)."""

    name: str  # "qwen2_5_vl" | "qwen3_vl": the demo-checkpoint name and VideoConfig.family
    model_types: tuple[str, ...]  # config.json model_types of the checkpoints these rules serve
    processor_class: str  # transformers' processor class (processor_class in a processor config)
    hf_video_processor: str  # "module:Class" of transformers' video processor (the bench peer loads it)
    patch_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    hub_pixel_limits: tuple[int, int]  # image (min, max) pixels of the public checkpoints' preprocessor configs
    video_min_pixels: int  # the video processor's class defaults
    video_max_pixels: int
    max_video_tokens: int
    video_reads_min_max_pixels: bool  # Qwen2VLVideoProcessor: min_pixels / max_pixels win over size
    num_sampled_frames: Callable[..., int]  # (cfg, total, src_fps, fps, max_frames) -> n
    sample_indices: Callable[..., list[int]]  # (cfg, total, src_fps, fps, max_frames) -> source frame indices
    resize_size: Callable[..., tuple[int, int]]  # (cfg, num_frames, height, width) -> (h, w)
    video_timing: Callable[..., VideoTiming]  # (cfg, frame_times [s], sampled_fps) -> VideoTiming


# ---- Qwen2.5-VL: Qwen2VLVideoProcessor + Qwen2_5_VLProcessor ------------------------------------------------------

def _qwen2_5_num_frames(cfg: VideoSettings, total: int, src_fps: float, fps: float, max_frames: int) -> int:
    """Floored to a multiple of temporal_patch_size."""
    tp, max_frames = cfg.temporal_patch_size, min(max_frames, cfg.max_frames)
    cap = math.floor(min(max_frames, total) / tp) * tp
    n = min(max(total / src_fps * fps, cfg.min_frames), cap, total)
    return math.floor(n / tp) * tp


def _qwen2_5_indices(cfg: VideoSettings, total: int, src_fps: float, fps: float, max_frames: int) -> list[int]:
    n = _qwen2_5_num_frames(cfg, total, src_fps, fps, max_frames)
    if n <= 0:
        return []
    import torch

    return torch.arange(0, total, total / n).int().tolist()  # Qwen2VLVideoProcessor.sample_frames' own rule


def _qwen2_5_resize(cfg: VideoSettings, num_frames: int, height: int, width: int) -> tuple[int, int]:
    """max_pixels bounds each frame."""
    max_pixels = cfg.max_pixels
    if cfg.cap_pixels_per_frame:
        total = int(cfg.max_video_tokens * cfg.factor * cfg.factor * 0.9)
        max_pixels = max(min(max_pixels, total * cfg.temporal_patch_size // num_frames), int(cfg.min_pixels * 1.05))
    return smart_resize(height, width, cfg.factor, cfg.min_pixels, max_pixels)


def _qwen2_5_timing(cfg: VideoSettings, frame_times: list[float], sampled_fps: float) -> VideoTiming:
    # Qwen2_5_VLProcessor's second_per_grid_t = tp / sampled fps, truncated by get_rope_index
    return VideoTiming(time_interval=cfg.tokens_per_second * int(cfg.temporal_patch_size / sampled_fps))


# ---- Qwen3-VL (dense and MoE): Qwen3VLVideoProcessor + Qwen3VLProcessor -------------------------------------------

def _qwen3_num_frames(cfg: VideoSettings, total: int, src_fps: float, fps: float, max_frames: int) -> int:
    n = int(total / src_fps * fps)
    return min(max(n, cfg.min_frames), min(max_frames, cfg.max_frames), total)


def _qwen3_indices(cfg: VideoSettings, total: int, src_fps: float, fps: float, max_frames: int) -> list[int]:
    """linspace(0, total - 1, n) rounded (the count is padded to temporal groups later, repeating the last)."""
    n = _qwen3_num_frames(cfg, total, src_fps, fps, max_frames)
    return np.linspace(0, total - 1, n).round().astype(int).tolist() if n > 0 else []


def _qwen3_resize(cfg: VideoSettings, num_frames: int, height: int, width: int) -> tuple[int, int]:
    """max_pixels bounds the whole clip (t * h * w)."""
    max_pixels = cfg.max_pixels
    if cfg.cap_pixels_per_frame:
        per_frame = max(min(cfg.max_video_tokens * cfg.factor * cfg.factor, cfg.max_pixels // num_frames),
                        int(cfg.min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    return clip_smart_resize(num_frames, height, width, cfg.temporal_patch_size, cfg.factor, cfg.min_pixels,
                             max_pixels)


def _qwen3_timing(cfg: VideoSettings, frame_times: list[float], sampled_fps: float) -> VideoTiming:
    # group_timestamps works on indices at a fps; frame_times are seconds already: fps 1
    times = group_timestamps(frame_times, 1.0, cfg.temporal_patch_size)
    return VideoTiming(group_times=tuple(times), run_per_group=True)


def clip_smart_resize(t: int, height: int, width: int, tf: int, factor: int, min_pixels: int,
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


QWEN2_5_VL = ProcessorFamily(
    name="qwen2_5_vl", model_types=("qwen2_5_vl",), processor_class="Qwen2_5_VLProcessor",
    hf_video_processor="transformers.models.qwen2_vl.video_processing_qwen2_vl:Qwen2VLVideoProcessor",
    patch_size=14, image_mean=CLIP_MEAN, image_std=CLIP_STD, hub_pixel_limits=(3136, 12845056),
    video_min_pixels=128 * 28 * 28, video_max_pixels=28 * 28 * 768, max_video_tokens=128000,
    video_reads_min_max_pixels=True, num_sampled_frames=_qwen2_5_num_frames, sample_indices=_qwen2_5_indices,
    resize_size=_qwen2_5_resize, video_timing=_qwen2_5_timing,
)
QWEN3_VL = ProcessorFamily(
    name="qwen3_vl", model_types=("qwen3_vl", "qwen3_vl_moe"), processor_class="Qwen3VLProcessor",
    hf_video_processor="transformers.models.qwen3_vl.video_processing_qwen3_vl:Qwen3VLVideoProcessor",
    patch_size=16, image_mean=HALF, image_std=HALF, hub_pixel_limits=(65536, 16777216),
    video_min_pixels=128 * 32 * 32, video_max_pixels=32 * 32 * 768, max_video_tokens=768,
    video_reads_min_max_pixels=False, num_sampled_frames=_qwen3_num_frames, sample_indices=_qwen3_indices,
    resize_size=_qwen3_resize, video_timing=_qwen3_timing,
)


FAMILIES = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL)}


def family_names() -> list[str]:
    """The processor families ("qwen2_5_vl", "qwen3_vl")."""
    return sorted(FAMILIES)


def family_by_name(name: str) -> ProcessorFamily:
    """The processor family called `name`; ValueError naming the known ones otherwise."""
    found = FAMILIES.get(name)
    if found is None:
        raise ValueError(f"unknown model family {name!r}; one of {', '.join(family_names())}")
    return found


def family_of_model_type(model_type: str) -> ProcessorFamily | None:
    """The family serving checkpoints of config.json model_type `model_type`, or None."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def family_of_processor_class(processor_class: str) -> ProcessorFamily | None:
    """The family whose transformers processor class is `processor_class` (processor configs without a
    config.json beside them), or None."""
    return next((f for f in FAMILIES.values() if f.processor_class == processor_class), None)


def demo_image_config(arch: str, hub_limits: bool = False) -> dict:
    """The preprocessor_config.json of the demo checkpoints of family `arch` (qwen2_5_vl or qwen3_vl): real Qwen
    settings with a small max_pixels (at most 64 merged tokens per image), or the public checkpoints' pixel limits
    with hub_limits=True. ValueError for an unknown family."""
    family = family_by_name(arch)
    patch, mean, std, processor = family.patch_size, family.image_mean, family.image_std, family.processor_class
    factor = patch * 2
    # Demo images become at most 64 merged tokens (8x8 blocks of factor x factor pixels).
    min_pixels, max_pixels = family.hub_pixel_limits if hub_limits else (factor * factor, 64 * factor * factor)
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": processor,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "patch_size": patch,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }


def write_preprocessor_config(out_dir: Path, arch: str, hub_limits: bool = False) -> None:
    """Write preprocessor_config.json for `arch` (qwen2_5_vl or qwen3_vl); see demo_image_config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(demo_image_config(arch, hub_limits), indent=2))
