"""Synthetic video clips made with PyAV (tests and the TTFT harness): moving colour gradients, any size and fps,
H.264 in MP4 / VP9 in WebM, optionally with a variable frame rate or an audio-only file. Nothing is downloaded."""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction

import numpy as np

_CODECS = {"mp4": ("libx264", "yuv420p"), "mov": ("libx264", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p"),
           "mjpeg": ("mjpeg", "yuvj420p")}  # mjpeg (in MP4): every frame a keyframe, fast to encode at any size


def frame_pixels(k: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Frame k: [height, width, 3] uint8, a gradient that moves with k (each frame differs, codecs keep detail)."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1) + 7 * k + seed * 31) % 256
    g = (y * 255 // max(height - 1, 1) + 3 * k) % 256
    b = ((x + y + 11 * k + seed * 17) // 4) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def make_clip(seconds: float = 2.0, width: int = 96, height: int = 64, fps: float = 10.0, fmt: str = "mp4",
              seed: int = 0, gop: int = 12, vfr_ms: list[int] | None = None, codec: str | None = None,
              faststart: bool = False) -> bytes:
    """An encoded clip of about `seconds` at `fps` (or, with vfr_ms, one frame per listed pts in milliseconds).

    gop: frames between keyframes (so seeking has keyframes to land on). yuv420p needs even sides: odd ones are
    rounded up by one pixel here (the decoder reports the encoded size). codec "mjpeg" (MP4 only) instead of the
    format's own; faststart: the MP4 index before the media data (a truncated file still opens); seed < 0: flat
    frames (fast to make at 8K)."""
    if faststart:  # the muxer rewrites the file to move the index: it needs a real file
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"clip.{fmt}")
            _encode(path, seconds, width, height, fps, fmt, seed, gop, vfr_ms, codec, {"movflags": "faststart"})
            with open(path, "rb") as f:
                return f.read()
    buf = io.BytesIO()
    _encode(buf, seconds, width, height, fps, fmt, seed, gop, vfr_ms, codec, {})
    return buf.getvalue()


def _encode(target, seconds, width, height, fps, fmt, seed, gop, vfr_ms, codec, options) -> None:
    import av

    codec, pix_fmt = _CODECS[codec or fmt]
    with av.open(target, mode="w", format=fmt, options=options) as out:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, pix_fmt
        stream.codec_context.gop_size = gop
        if codec == "libx264":  # fast to make (tests, the harness); decoding costs about what any H.264 clip does
            stream.codec_context.options = {"preset": "veryfast"}
        if vfr_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        stamps = vfr_ms if vfr_ms is not None else range(max(int(round(seconds * fps)), 1))
        for k, stamp in enumerate(stamps):
            pixels = frame_pixels(k, stream.width, stream.height, seed) if seed >= 0 else \
                np.full((stream.height, stream.width, 3), 16 * k % 256, dtype=np.uint8)  # seed < 0: flat frames
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if vfr_ms is not None:
                frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_audio_only(seconds: float = 1.0, fmt: str = "mp4") -> bytes:
    """An MP4 (AAC) or WebM (Opus) file with one audio stream and no video."""
    import av

    codec, rate = ("aac", 44100) if fmt == "mp4" else ("libopus", 48000)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        samples = int(seconds * rate)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples, frame_size):
            tone = np.sin(np.arange(start, start + frame_size) * 0.05).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decode_all(data: bytes) -> list[np.ndarray]:
    """Every frame of a clip, decoded in order from the start (the reference the seeking decoder must match)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
