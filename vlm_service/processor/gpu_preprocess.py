"""Image decode and preprocessing on the GPU (`--preprocess-device cuda`; auto picks it when the model is on CUDA).

Per image, in a preprocessing-pool thread:
- the header is parsed and checked exactly as on the CPU path (image.open_checked: mime type, size, bombs);
- a plain JPEG (8-bit YCbCr or grayscale, baseline or progressive, no EXIF rotation, not CMYK/Adobe/MPO, complete
  up to its EOI marker) is decoded on the GPU by nvJPEG through torchvision.io.decode_jpeg (the `gpu-preprocess`
  extra); everything else (PNG, WebP, GIF, the other JPEGs, or any GPU decode error) is decoded on the host by
  image.decode_image, so orientation, alpha, palette, CMYK and 16-bit handling are the CPU path's own, and the
  uint8 RGB pixels are copied to the device;
- resize, rescale + normalise and the patch layout run as torch ops on the device (gpu_ops.py), written in the
  tower's dtype, so the engine gets `pixel_values` already on the device (model_runner uses them without a copy).
Each pool thread has its own CUDA stream and synchronises only that stream before handing the tensor over (never
the device); the engine thread then reads it on its own stream (model_runner records that use on the tensor, so
the caching allocator does not hand its memory back to this stream before the tower has read it).

The resampler differs from PIL's by one level on rare pixels and nvJPEG's decoder from libjpeg-turbo's by about a
level on average: this is a tolerance path (tests/processor/test_gpu_preprocess_gpu.py); the CPU path stays the
oracle. Content hashes (vision and prefix cache keys) stay the sha256 of the encoded bytes (processor.py).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image

from vlm_service.processor.gpu_ops import ThreadStreams, preprocess_pixels, value_table
from vlm_service.processor.image import decode_image, open_checked
from vlm_service.processor.vision import ImageConfig, preprocess_image

log = logging.getLogger(__name__)

PREPROCESS_DEVICES = ("auto", "cpu", "cuda")
_EXIF_ORIENTATION = 0x0112
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


def resolve_preprocess_device(name: str, model_device: torch.device) -> torch.device | None:
    """The device images are preprocessed on, None for the CPU path: auto -> the CPU path for now (on the H200,
    2026-12-01, nvJPEG's pixels differed from libjpeg-turbo's by up to 97 levels on noise-like JPEGs, beyond the
    bound the GPU tests hold it to; see benchmarks/results/2026-12-01_h200_s4); cuda -> the model's CUDA device
    (refused when the model is not on CUDA: its pixels would only come back)."""
    if name not in PREPROCESS_DEVICES:
        raise ValueError(f"--preprocess-device must be one of {', '.join(PREPROCESS_DEVICES)}, not {name!r}")
    if name in ("cpu", "auto"):
        return None
    if model_device.type != "cuda":
        raise ValueError(f"--preprocess-device cuda needs the model on CUDA (it runs on {model_device})")
    return model_device


def resolve_video_preprocess_device(name: str, model_device: torch.device) -> torch.device | None:
    """The device video frames are resized / normalised / laid out on (gpu_video.py), None for the CPU path:
    cuda, and auto when the model is on CUDA -> the model's device (the frames then follow transformers' own GPU
    video processor: the decoder is the same PyAV one, only the resize runs in float32 as torchvision's does off
    the CPU); cpu, or auto with the model elsewhere -> the host path. Refusals as resolve_preprocess_device's."""
    image_device = resolve_preprocess_device(name, model_device)  # validates the name and cuda's needs
    if name == "auto" and model_device.type == "cuda":
        return model_device
    return image_device


def load_jpeg_decoder():
    """torchvision's (decode_jpeg, ImageReadMode), or None when torchvision cannot be loaded (logged)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # not installed, or built for another torch: the host decodes JPEG too
        log.warning("torchvision.io.decode_jpeg unavailable (%s: %s): JPEG decoded on the host",
                    type(exc).__name__, exc)
        return None
    return decode_jpeg, ImageReadMode


def gpu_jpeg_mode(img: Image.Image, data: bytes) -> str | None:
    """"RGB" or "GRAY" when the lazily opened `img` is a JPEG nvJPEG decodes to what the CPU path makes of it
    (RGB, or gray replicated to RGB), else None (the host decodes it)."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or getattr(img, "bits", 8) != 8:
        return None  # MPO (multi-picture), CMYK/YCCK, 12-bit: the host path
    if "adobe" in img.info:  # an Adobe APP14 marker may declare RGB or YCCK samples: leave the guessing to libjpeg
        return None
    if img.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):  # what ImageOps.exif_transpose would rotate
        return None
    if not data.rstrip(b"\x00").endswith(_JPEG_EOI):  # truncated: the host path reports it as the CPU path does
        return None
    return "RGB" if img.mode == "RGB" else "GRAY"


class GpuPreprocessor:
    """Callable (data, mime_type, max_pixels, field) -> (pixel_values on `device` in `dtype`, grid_thw).

    Raises InvalidImage exactly where image.decode_image does. On a CPU device (the CPU tests) the same code runs
    without streams or pinned memory."""

    def __init__(self, cfg: ImageConfig, device: torch.device | str, dtype: torch.dtype, jpeg_decoder="auto",
                 warm_up: bool = True):
        """jpeg_decoder: "auto" (torchvision when loadable), None (host decoding only) or (decode_jpeg, modes)."""
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.cuda = self.device.type == "cuda"
        self.table = value_table(cfg, dtype, self.device)  # [C, 256] rescale + normalise, the CPU path's values
        self.jpeg = load_jpeg_decoder() if jpeg_decoder == "auto" else jpeg_decoder
        self._streams = ThreadStreams(self.device)
        self._warned = False
        self.images = {"gpu_jpeg": 0, "host_decode": 0, "cpu_fallback": 0}  # counts, for logs and tests
        if warm_up:
            self._warm_up()

    def __call__(self, data: bytes, mime_type: str, max_pixels: int, field: str
                 ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        with self._streams.current() as stream:
            pixels = self._decode(data, mime_type, max_pixels, field)  # uint8 [3, H, W] on the device
            try:
                out = preprocess_pixels(pixels, self.cfg, self.table)
            except RuntimeError as exc:  # e.g. an antialiased resize beyond the CUDA kernel's limits
                self._warn("GPU resize failed (%s); this image is preprocessed on the CPU", exc)
                out = self._cpu_path(data, mime_type, max_pixels, field)
            if stream is not None:
                stream.synchronize()  # this thread's stream only: the tensor is complete when the engine gets it
        return out

    # ---- decode ----------------------------------------------------------------------------------------------
    def _decode(self, data: bytes, mime_type: str, max_pixels: int, field: str) -> torch.Tensor:
        if self.jpeg is not None and data.startswith(_JPEG_SOI):
            img = open_checked(data, mime_type, max_pixels, field)  # the CPU path's checks, before any decoding
            try:
                mode, size = gpu_jpeg_mode(img, data), (img.height, img.width)
            finally:
                img.close()
            if mode is not None:
                pixels = self._decode_jpeg(data, mode, size)
                if pixels is not None:
                    self.images["gpu_jpeg"] += 1
                    return pixels
        self.images["host_decode"] += 1
        return self._upload(decode_image(data, mime_type, max_pixels, field))

    def _decode_jpeg(self, data: bytes, mode: str, size: tuple[int, int]) -> torch.Tensor | None:
        """uint8 [3, H, W] on the device from nvJPEG, None (logged) when it fails or disagrees with the header."""
        decode_jpeg, modes = self.jpeg
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a writable copy: torch wants one
            pixels = decode_jpeg(raw, mode=getattr(modes, mode), device=self.device)
        except Exception as exc:  # torchvision raises RuntimeError for what nvJPEG refuses; any other: the host too
            self._warn("nvJPEG could not decode a JPEG (%s); decoding it on the host", exc)
            return None
        channels = 3 if mode == "RGB" else 1
        if tuple(pixels.shape) != (channels, *size) or pixels.dtype != torch.uint8:
            self._warn("nvJPEG returned %s for a %s JPEG of %s; decoding it on the host", tuple(pixels.shape),
                       mode, size)
            return None
        return pixels if channels == 3 else pixels.expand(3, -1, -1)  # PIL's L -> RGB replicates the gray

    def _upload(self, rgb: Image.Image) -> torch.Tensor:
        """A host-decoded RGB image -> uint8 [3, H, W] on the device (through pinned memory, on this stream)."""
        host = torch.empty((rgb.height, rgb.width, 3), dtype=torch.uint8, pin_memory=self.cuda)
        host.numpy()[...] = np.asarray(rgb)
        return host.to(self.device, non_blocking=True).permute(2, 0, 1)

    def _cpu_path(self, data: bytes, mime_type: str, max_pixels: int, field: str):
        self.images["cpu_fallback"] += 1
        img = decode_image(data, mime_type, max_pixels, field)
        values, grid = preprocess_image(img, self.cfg, self.dtype, pin_memory=self.cuda)
        return values.to(self.device, non_blocking=True), grid

    # ---- plumbing --------------------------------------------------------------------------------------------
    def _warn(self, msg: str, *args) -> None:
        """The first occurrence at WARNING, later ones at DEBUG (a client sending odd JPEGs must not flood)."""
        log.log(logging.DEBUG if self._warned else logging.WARNING, msg, *args)
        self._warned = True

    def _warm_up(self) -> None:
        """Decode and preprocess a small JPEG and PNG now (nvJPEG's handle, the kernels), compare them with the
        CPU path and log the largest difference; a GPU JPEG decoder that fails here is switched off."""
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            img.save(buf, fmt)
            data = buf.getvalue()
            before = self.images["gpu_jpeg"]
            got, grid = self(data, "", 96 * 128, "warmup")
            if fmt == "JPEG" and self.jpeg is not None and self.images["gpu_jpeg"] == before:
                log.warning("GPU JPEG decoding failed at start-up: JPEG decoded on the host")
                self.jpeg = None
            want, _ = preprocess_image(decode_image(data, "", 96 * 128, "warmup"), self.cfg, self.dtype)
            diff = (got.float().cpu() - want.float()).abs().max().item()
            log.info("GPU preprocessing on %s (%s, %s decode): warm-up %s %s max |diff| vs the CPU path %.4f",
                     self.device, str(self.dtype).removeprefix("torch."),
                     "nvJPEG" if fmt == "JPEG" and self.jpeg is not None else "host", fmt, grid, diff)
        self.images = dict.fromkeys(self.images, 0)

