"""Image decoding with the limits checked before any pixel is allocated.

Rules (every failure is an `InvalidImage` naming the request field):
- formats: PNG, JPEG, WebP, GIF (first frame only); an empty mime type is sniffed from the bytes, a declared one must
  agree with the bytes;
- the pixel count is read from the header and checked against `max_pixels` before decoding (decompression bombs);
- the file is fully decoded here, so a truncated file fails now rather than later in the pipeline;
- EXIF orientation is applied;
- the shorter side must be at least `MIN_IMAGE_SIDE` px and the aspect ratio at most `MAX_ASPECT_RATIO` (the limit
  of Qwen's smart_resize), so every accepted image yields at least one merged vision token.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from vlm_service.errors import InvalidImage

MIN_IMAGE_SIDE = 4  # px: below this an image carries no usable content (1x1 pixels, 2px slivers)
MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses anything longer and thinner

_MIME_TO_FORMAT = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# PIL reports multi-picture JPEGs (phone cameras: MPO) under their own name; they are JPEG files, first frame used.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Errors PIL raises on corrupt or truncated data while parsing or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)


def supported_mime_types() -> tuple[str, ...]:
    """The canonical mime types accepted by `decode_image` (image/jpg is also accepted as an alias)."""
    return ("image/png", "image/jpeg", "image/webp", "image/gif")


def decode_image(data: bytes, mime_type: str, max_pixels: int, field: str) -> Image.Image:
    """Decode `data` into an RGB PIL image, or raise InvalidImage(field=field).

    `max_pixels` bounds width*height as declared by the header, checked before the pixels are decoded.
    """
    return _decode_rgb(open_checked(data, mime_type, max_pixels, field), field)


def open_checked(data: bytes, mime_type: str, max_pixels: int, field: str) -> Image.Image:
    """The image with only its header parsed, after every check decode_image makes before decoding (mime type,
    format, size, aspect ratio); raises InvalidImage(field=field). The caller closes it (decode_image: when done)."""
    if not data:
        raise InvalidImage("image is empty (zero bytes)", field=field)
    expected = _expected_format(mime_type, field)
    img = _open_lazily(data, field)
    try:
        if expected is not None and _FORMAT_ALIASES.get(img.format, img.format) != expected:
            raise InvalidImage(f"declared mime type {mime_type!r} but the bytes are {img.format}", field=field)
        _check_size(img.width, img.height, max_pixels, field)
        _check_still(img, field)
    except InvalidImage:
        img.close()
        raise
    return img


def probe_image(data: bytes, mime_type: str, max_pixels: int, field: str) -> tuple[int, int, int]:
    """(width, height, bands) from the header alone, with every check decode_image makes before decoding."""
    img = open_checked(data, mime_type, max_pixels, field)
    try:
        return img.width, img.height, len(img.getbands())
    finally:
        img.close()


def _check_still(img: Image.Image, field: str) -> None:
    """An animated GIF/WebP/PNG is refused rather than silently cut to its first frame: the model would answer about
    one frame while the user asked about the animation. (A multi-picture JPEG, as phone cameras write, also has
    frames; its first picture is the photo, and it stays accepted.)"""
    if img.format not in ("GIF", "WEBP", "PNG"):
        return
    try:
        frames = getattr(img, "n_frames", 1)  # counts frames by walking the file's blocks (no pixel decode)
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}", field=field) from None
    if frames > 1:
        img.close()
        raise InvalidImage(f"an animated {img.format} ({frames} frames); only still images are accepted: send one "
                           "frame (e.g. as PNG)", field=field)


def _expected_format(mime_type: str, field: str) -> str | None:
    mime = mime_type.strip().lower()
    if not mime:
        return None
    if mime not in _MIME_TO_FORMAT:
        supported = ", ".join(supported_mime_types())
        raise InvalidImage(f"unsupported mime type {mime_type!r} (supported: {supported})", field=field)
    return _MIME_TO_FORMAT[mime]


def _open_lazily(data: bytes, field: str) -> Image.Image:
    """Parse only the header; PIL's own bomb guard (DecompressionBombError) is mapped to InvalidImage too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage("not a PNG, JPEG, WebP or GIF image", field=field) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image too large: {exc}", field=field) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"corrupt image header: {exc}", field=field) from None


def _check_size(width: int, height: int, max_pixels: int, field: str) -> None:
    if width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                           field=field)
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidImage(f"image is {width}x{height}; each side must be at least {MIN_IMAGE_SIDE} px", field=field)
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InvalidImage(f"image is {width}x{height}; the aspect ratio must be at most {MAX_ASPECT_RATIO}",
                           field=field)


_ORIENTATION = 0x0112  # the EXIF tag exif_transpose reads


def _decode_rgb(img: Image.Image, field: str) -> Image.Image:
    """Force the full decode of the first frame, apply EXIF orientation, convert to RGB. An upright RGB image is
    returned as decoded: exif_transpose copies one it does not rotate (~4 ms at 1024², 60 ms at 4096²)."""
    try:
        img.seek(0)
        img.load()
        out = ImageOps.exif_transpose(img) if img.getexif().get(_ORIENTATION, 1) != 1 else img
        out = out if out.mode == "RGB" else out.convert("RGB")
    except _DECODE_ERRORS as exc:
        img.close()
        raise InvalidImage(f"corrupt or truncated image: {exc}", field=field) from None
    if out is not img:
        img.close()
    return out
