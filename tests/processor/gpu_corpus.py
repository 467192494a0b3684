"""Real-looking test images for the GPU preprocessing tests: gradients + noise + flat shapes, many sizes (odd ones,
thin 4xN ones), encoded as JPEG (baseline, progressive, grayscale, EXIF-rotated, CMYK), PNG (RGB, RGBA, palette,
16-bit gray) and WebP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# (height, width): odd sizes, sizes already on a 28/32 grid, thin ones (aspect up to 200), one large photo size
SIZES = [(1024, 1024), (333, 517), (57, 91), (4, 800), (900, 5), (31, 29), (600, 3 * 4), (768, 1366), (64, 64),
         (1000, 7)]


def real_looking(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [H, W, 3]: colour gradients and a sine texture, sensor-like noise, a few flat rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1),
                    128 + 100 * np.sin(xx / 7 + yy / 11)], -1)
    img += rng.normal(0, 8, img.shape)
    for _ in range(5):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        r = int(rng.integers(1, max(2, min(height, width) // 3)))
        img[max(0, y0 - r):y0 + r, max(0, x0 - r):x0 + r] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(pixels: np.ndarray, orientation: int = 6) -> bytes:
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=90, exif=exif.tobytes())


def corpus(sizes=SIZES) -> list[tuple[str, bytes, str]]:
    """[(name, bytes, mime type)]: every size as JPEG q90 and PNG, plus the special encodings on two sizes."""
    out = []
    for k, (h, w) in enumerate(sizes):
        px = real_looking(h, w, seed=k)
        img = Image.fromarray(px)
        out.append((f"jpeg-{h}x{w}", encode(img, "JPEG", quality=90), "image/jpeg"))
        out.append((f"png-{h}x{w}", encode(img, "PNG", compress_level=1), "image/png"))
    px = real_looking(333, 517, seed=99)
    img = Image.fromarray(px)
    out += [
        ("jpeg-progressive", encode(img, "JPEG", quality=85, progressive=True), "image/jpeg"),
        ("jpeg-444", encode(img, "JPEG", quality=95, subsampling=0), "image/jpeg"),
        ("jpeg-gray", encode(img.convert("L"), "JPEG", quality=90), "image/jpeg"),
        ("jpeg-exif-rotated", exif_rotated_jpeg(px), "image/jpeg"),
        ("jpeg-cmyk", encode(img.convert("CMYK"), "JPEG", quality=90), "image/jpeg"),
        ("webp", encode(img, "WEBP", quality=90), "image/webp"),
        ("png-rgba", encode(img.convert("RGBA"), "PNG"), "image/png"),
        ("png-palette", encode(img.convert("P"), "PNG"), "image/png"),
        ("png-16bit-gray", encode(Image.fromarray(px[..., 0].astype(np.uint16) * 257), "PNG"), "image/png"),
        ("gif", encode(img.convert("P"), "GIF"), "image/gif"),
    ]
    return out
