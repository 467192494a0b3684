"""Benchmark videos: synthetic clips of a given length, resolution and fps made with PyAV (bench/clips.py), or the
video files of a folder. Clips are encoded once per distinct shape and seed before the timed run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".m4v": "video/mp4"}
_FORMAT_MIME = {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}


@dataclass(frozen=True)
class VideoItem:
    """One encoded video of a request; fps: the sampling fps to ask for (None = the server's default)."""

    data: bytes
    mime_type: str
    seconds: float = 0.0
    sample_fps: float | None = None


def parse_wh(text: str) -> tuple[int, int]:
    """ "1280x720" -> (1280, 720) (width x height, as video sizes are written)."""
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()) or min(int(w), int(h)) <= 0:
        raise ValueError(f"bad video resolution {text!r}: use WxH, e.g. 1280x720")
    return int(w), int(h)


def synthetic_video(seconds: float, resolution: str, fps: float, fmt: str = "mp4", seed: int = 0,
                    sample_fps: float | None = None) -> VideoItem:
    """A moving-gradient clip (H.264 in MP4 / MOV, VP9 in WebM), keyframe every 2 s like a typical encode."""
    from vlm_service.bench.clips import make_clip

    width, height = parse_wh(resolution)
    data = make_clip(seconds, width, height, fps, fmt, seed=seed, gop=max(int(2 * fps), 1))
    return VideoItem(data, _FORMAT_MIME[fmt], seconds, sample_fps)


def folder_videos(path: Path, sample_fps: float | None = None) -> list[VideoItem]:
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise ValueError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {path}")
    return [VideoItem(p.read_bytes(), VIDEO_SUFFIXES[p.suffix.lower()], 0.0, sample_fps) for p in files]
