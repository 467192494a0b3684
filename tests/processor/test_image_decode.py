import struct
import zlib

import psutil
import pytest
from PIL import Image, ImageFile

from proc_images import encode, random_image
from vlm_service.errors import InvalidImage
from vlm_service.processor.image import MIN_IMAGE_SIDE, decode_image, supported_mime_types

FIELD = "messages[0].content[1].image"
LIMIT = 40_000_000


def _refused(data: bytes, mime: str = "", max_pixels: int = LIMIT) -> InvalidImage:
    with pytest.raises(InvalidImage) as info:
        decode_image(data, mime, max_pixels, FIELD)
    assert info.value.field == FIELD
    return info.value


def _png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width x height RGB pixels (its data is a few zero rows)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                      ("GIF", "image/gif")])
def test_each_format_decodes_to_rgb_with_declared_or_sniffed_mime(fmt, mime):
    data = encode(random_image(33, 21), fmt)
    for declared in (mime, ""):
        img = decode_image(data, declared, LIMIT, FIELD)
        assert img.mode == "RGB" and img.size == (33, 21)
    assert mime in supported_mime_types()


def test_modes_are_converted_to_rgb():
    for mode in ("L", "RGBA", "P", "LA"):
        img = decode_image(encode(random_image(16, 16, mode=mode)), "", LIMIT, FIELD)
        assert img.mode == "RGB"


def test_zero_bytes_text_and_unknown_mime_are_refused():
    assert "empty" in str(_refused(b""))
    assert "not a PNG" in str(_refused(b"this is plain text, not an image", "image/png"))
    assert "unsupported mime" in str(_refused(encode(random_image(8, 8)), "image/bmp"))
    assert "not a PNG" in str(_refused(encode(random_image(8, 8), "BMP")))  # real bytes of an unsupported format


def test_declared_mime_must_match_bytes():
    err = _refused(encode(random_image(16, 16), "PNG"), "image/jpeg")
    assert "image/jpeg" in str(err) and "PNG" in str(err)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated_files_are_refused(fmt):
    data = encode(random_image(128, 96, seed=3), fmt)
    for cut in (len(data) // 2, 40):
        _refused(data[:cut])


@pytest.mark.parametrize("size", [(1, 1), (MIN_IMAGE_SIDE - 1, 64), (64, 2), (1000, 4)])
def test_tiny_and_extreme_aspect_images_are_refused(size):
    _refused(encode(random_image(*size)))


def test_smallest_accepted_image():
    assert decode_image(encode(random_image(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)), "", LIMIT, FIELD).size == (4, 4)


def test_over_pixel_limit_is_refused_from_header(monkeypatch):
    def no_decode(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    err = _refused(_png_declaring(8000, 8000))  # 64 M pixels: over our 40 M, under PIL's own bomb limit
    assert "over the limit" in str(err)
    _refused(_png_declaring(200, 200), max_pixels=100 * 100)


def test_decompression_bomb_refused_with_small_peak_memory(monkeypatch):
    data = _png_declaring(30000, 30000)  # 2.7 GB of RGB if decoded
    assert len(data) < 200
    proc = psutil.Process()
    before = proc.memory_info().rss
    for max_pixels in (LIMIT, 10**10):  # our header check, then PIL's DecompressionBombError behind it
        _refused(data, "image/png", max_pixels=max_pixels)
    assert proc.memory_info().rss - before < 50 << 20


def test_animated_gif_is_refused_not_cut_to_its_first_frame():
    frames = [Image.new("RGB", (20, 20), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(__import__("io").BytesIO(data)), "n_frames", 1) == 2
    with pytest.raises(InvalidImage, match="animated GIF") as err:
        decode_image(data, "image/gif", LIMIT, FIELD)
    assert err.value.field == FIELD


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    img = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), "image/jpeg", LIMIT, FIELD)
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_multi_picture_jpeg_is_a_jpeg():
    frames = [Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 200))]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    r, _, b = decode_image(data, "image/jpeg", LIMIT, FIELD).getpixel((5, 5))
    assert r > 150 and b < 50
