"""Synthetic images for the benchmark: resolution specs, random-noise or blank content, JPEG or PNG bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Presets name (height, width), the usual video names.
RESOLUTION_PRESETS: dict[str, tuple[int, int]] = {
    "360p": (360, 640),
    "720p": (720, 1280),
    "1080p": (1080, 1920),
    "4k": (2160, 3840),
}
MIME_BY_FORMAT = {"jpeg": "image/jpeg", "png": "image/png"}


@dataclass(frozen=True)
class ImageItem:
    """One encoded image of a request."""

    data: bytes
    mime_type: str
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _parse_hw(text: str) -> tuple[int, int]:
    text = text.strip().lower()
    if text in RESOLUTION_PRESETS:
        return RESOLUTION_PRESETS[text]
    parts = text.split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or min(int(p) for p in parts) <= 0:
        raise ValueError(f"bad resolution {text!r}: use a preset ({', '.join(RESOLUTION_PRESETS)}), HxW or HxW:HxW")
    return int(parts[0]), int(parts[1])


class ResolutionSampler:
    """Draws (height, width) from a spec.

    Spec forms: a preset ("720p"), "HxW" (e.g. "1024x768" is 1024 high, 768 wide), a range "HxW:HxW" (each side
    uniform between the two), or a comma list of any of those (one chosen uniformly per image).
    """

    def __init__(self, spec: str):
        self.choices = [self._parse_one(s) for s in spec.split(",") if s.strip()]
        if not self.choices:
            raise ValueError("empty resolution spec")

    @staticmethod
    def _parse_one(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
        lo, _, hi = text.partition(":")
        lo_hw = _parse_hw(lo)
        hi_hw = _parse_hw(hi) if hi else lo_hw
        if hi_hw[0] < lo_hw[0] or hi_hw[1] < lo_hw[1]:
            raise ValueError(f"bad resolution range {text!r}: the second size must be the larger")
        return lo_hw, hi_hw

    def sample(self, rng: np.random.Generator) -> tuple[int, int]:
        (h0, w0), (h1, w1) = self.choices[int(rng.integers(len(self.choices)))]
        return int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1))


def make_image(rng: np.random.Generator, height: int, width: int, content: str, fmt: str) -> ImageItem:
    """Encode one synthetic image.

    content "noise": uniform random RGB (worst case for the codec, unique per image);
    content "blank": one solid random colour (cheap to encode, still a distinct content hash most of the time).
    """
    if fmt not in MIME_BY_FORMAT:
        raise ValueError(f"image format must be one of {sorted(MIME_BY_FORMAT)}, not {fmt!r}")
    if content == "noise":
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)  # [H, W, 3]
        img = Image.fromarray(pixels, "RGB")
    elif content == "blank":
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        img = Image.new("RGB", (width, height), colour)
    else:
        raise ValueError(f"image content must be noise or blank, not {content!r}")
    return ImageItem(encode(img, fmt), MIME_BY_FORMAT[fmt], height, width)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", compress_level=1)  # fast: the harness should not be the bottleneck
    return buf.getvalue()


def load_image_file(path) -> ImageItem:
    """Read an image file as-is (bytes untouched), size from its header. A file PIL cannot read is kept too, with
    size 0x0 and the mime type of its suffix: sending malformed images on purpose is part of benchmarking."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            (width, height), fmt = img.size, (img.format or "").lower()
    except (OSError, ValueError, Image.DecompressionBombError):
        width = height = 0
        fmt = str(path).rsplit(".", 1)[-1].lower().replace("jpg", "jpeg")
    return ImageItem(data, _MIME_BY_PIL.get(fmt, ""), height, width)


_MIME_BY_PIL = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
