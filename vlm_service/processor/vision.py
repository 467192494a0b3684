"""Image preprocessing, step for step what transformers' Qwen2VLImageProcessorPil does.

resize to the smart_resize size with PIL (bicubic) → rescale in float64 then float32 → normalize in float32 →
patchify into [grid_h * grid_w, C * temporal_patch * patch * patch], rows ordered by 2x2 merge blocks.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DEFAULT_MIN_PIXELS = 56 * 56
_DEFAULT_MAX_PIXELS = 28 * 28 * 1280


@dataclass(frozen=True)
class ImageConfig:
    """The image processor settings of a checkpoint (preprocessor_config.json / processor_config.json)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = _DEFAULT_MIN_PIXELS
    max_pixels: int = _DEFAULT_MAX_PIXELS
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self):
        if min(self.patch_size, self.temporal_patch_size, self.merge_size) <= 0:
            raise ValueError("patch_size, temporal_patch_size and merge_size must be positive")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        """Read the HF keys; min_pixels/max_pixels win over size.{shortest,longest}_edge, as in transformers."""
        size = d.get("size") or {}
        kw = dict(
            min_pixels=d.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels") or _DEFAULT_MIN_PIXELS,
            max_pixels=d.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels") or _DEFAULT_MAX_PIXELS,
        )
        for key in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor", "do_rescale",
                    "do_normalize", "resample"):
            if d.get(key) is not None:
                kw[key] = d[key]
        for key in ("image_mean", "image_std"):
            if d.get(key) is not None:
                kw[key] = tuple(d[key]) if isinstance(d[key], (list, tuple)) else (d[key],) * 3
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> "ImageConfig":
        """Load from preprocessor_config.json, else processor_config.json (flat or with an image_processor entry)."""
        model_dir = Path(model_dir)
        for name in ("preprocessor_config.json", "processor_config.json"):
            path = model_dir / name
            if path.is_file():
                d = json.loads(path.read_text())
                return cls.from_dict(d.get("image_processor", d))
        raise FileNotFoundError(f"{model_dir} has no preprocessor_config.json or processor_config.json")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's resize rule: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    Raises ValueError for an aspect ratio over 200 (callers validate images before, see image.py).
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is over 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / scale / factor) * factor)
        w_bar = max(factor, math.floor(width / scale / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * scale / factor) * factor
        w_bar = math.ceil(width * scale / factor) * factor
    return h_bar, w_bar


# Band pool: large resizes run in bands on a few threads (PIL's resample releases the GIL). Separate from the
# server's preprocess pool, and band tasks never wait on anything, so callers on any thread cannot deadlock.
BAND_THREADS = min(4, os.cpu_count() or 1)
BAND_MIN_PIXELS = 256 * 256  # output pixels from which bands pay (measured: ~25% off at 308x336 on 2 cores)
# the pixel read-out, look-up and layout work in pieces of at most this many pixels: numpy holds the GIL through
# each call, and a 4096² plane in one np.take (or np.asarray of the whole image) held it for 10-16 ms at a time
# (benchmarks/gil_hold.py), stalling the event loop
GIL_PIECE_PIXELS = 1 << 20
# The filters of PIL's separable two-pass resample (NEAREST goes through an affine transform instead).
_BANDED_FILTERS = frozenset({Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.HAMMING,
                             Image.Resampling.BICUBIC, Image.Resampling.LANCZOS})
_band_pool: ThreadPoolExecutor | None = None
_band_pool_lock = threading.Lock()
# Bands only pay while the host has idle cores, i.e. when one image is being preprocessed. On the H200 host (16
# cores, 8 preprocess threads) under the 32-in-flight load test, banding every image raised the server's median
# preprocess time from 35 to 58-67 ms (more GIL hand-offs between the threads), while a lone 1024² image went from
# 105 to 42 ms (Qwen2.5-VL). So an image is banded only when no other preprocess_image call is running.
_active = 0
_active_lock = threading.Lock()


class _Preprocessing:
    """Counts preprocess_image calls in flight; `alone` is whether this one had the host to itself on entry."""

    def __enter__(self) -> bool:
        global _active
        with _active_lock:
            _active += 1
            return _active == 1

    def __exit__(self, *exc) -> None:
        global _active
        with _active_lock:
            _active -= 1


def _band_executor() -> ThreadPoolExecutor:
    global _band_pool
    if _band_pool is None:
        with _band_pool_lock:
            if _band_pool is None:
                _band_pool = ThreadPoolExecutor(max_workers=BAND_THREADS, thread_name_prefix="vision-band")
    return _band_pool


def _spans(total: int, parts: int) -> list[tuple[int, int]]:
    """[0, total) in at most `parts` non-empty, nearly equal [lo, hi) spans."""
    edges = [total * k // parts for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def _run_bands(fn, spans: list[tuple[int, int]]) -> None:
    """fn(lo, hi) for every span: the caller runs the first itself, the band pool the others; bands the pool has
    not started by then (it is busy with other requests' bands) the caller takes back and runs too, so it never
    idles behind a queue. Returns once all are done; re-raises a band's error."""
    if len(spans) <= 1:
        for lo, hi in spans:
            fn(lo, hi)
        return
    futures = [_band_executor().submit(fn, lo, hi) for lo, hi in spans[1:]]
    try:
        fn(*spans[0])
        for f, (lo, hi) in reversed(list(zip(futures, spans[1:]))):
            if f.cancel():
                fn(lo, hi)
    finally:
        # never leave a band writing into buffers the caller is done with (cancelled ones only count as done in
        # wait() once a worker dequeues them: leave them out)
        started = [f for f in futures if not f.cancelled()]
        wait(started)
    for f in started:
        f.result()


def resize_banded(img: Image.Image, size: tuple[int, int], resample: int, bands: int | None = None) -> Image.Image:
    """img.resize(size, resample), byte for byte, computed in bands on the band pool; `img` itself when the size
    is unchanged (PIL would copy it; callers here only read the result).

    PIL resamples in two separable passes, horizontal (over all rows of the source) then vertical (over all columns
    of that intermediate). A pass's coefficients depend only on the input and output length along its axis, and
    every output row of the horizontal pass (every output column of the vertical one) depends only on its own
    source row (column). So the horizontal pass runs on bands of full-width source rows and the vertical pass on
    bands of full-height intermediate columns, each a plain resize of a crop along one axis: the coefficients are
    PIL's own for the whole image and the bytes are the same. (Bands of output rows with a float box, the obvious
    split, are not exact: the box's start and scale round differently, and PIL takes the box as float32.)"""
    bands = BAND_THREADS if bands is None else bands
    src_w, src_h = img.size
    dst_w, dst_h = size
    if (src_w, src_h) == (dst_w, dst_h):
        return img
    if (bands < 2 or dst_w * dst_h < BAND_MIN_PIXELS or img.mode not in ("RGB", "L") or resample not in _BANDED_FILTERS
            or (src_h > src_w * 100 and dst_h < src_h)):  # the last: PIL resizes such tall images vertically first
        return img.resize(size, resample=resample)
    img.load()
    mid = img
    if dst_w != src_w:  # horizontal pass, as PIL's: [src_h rows, dst_w]
        mid = Image.new(img.mode, (dst_w, src_h))

        def horizontal(lo: int, hi: int) -> None:
            mid.paste(img.crop((0, lo, src_w, hi)).resize((dst_w, hi - lo), resample=resample), (0, lo))

        _run_bands(horizontal, _spans(src_h, bands))
    if dst_h == src_h:
        return mid
    out = Image.new(img.mode, (dst_w, dst_h))

    def vertical(lo: int, hi: int) -> None:
        out.paste(mid.crop((lo, 0, hi, src_h)).resize((hi - lo, dst_h), resample=resample), (lo, 0))

    _run_bands(vertical, _spans(dst_w, bands))
    return out


def preprocess_image(img: Image.Image, cfg: ImageConfig, out_dtype: torch.dtype = torch.float32,
                     pin_memory: bool = False) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """RGB PIL image -> (pixel_values [gh*gw, C*tp*p*p], grid_thw (1, gh, gw)), as transformers does.

    In float32 the values are bit-identical to transformers'. out_dtype / pin_memory let a CUDA server receive the
    model dtype in pinned memory from the same single copy that lays out the patches (no extra pass).
    A large image preprocessed while no other is gets resized, looked up and laid out in bands on the band pool
    (see resize_banded and _active)."""
    with _Preprocessing() as alone:
        return _preprocess(img, cfg, out_dtype, pin_memory, BAND_THREADS if alone else 1)


def _preprocess(img: Image.Image, cfg: ImageConfig, out_dtype: torch.dtype, pin_memory: bool,
                bands: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    if img.mode != "RGB":
        img = img.convert("RGB")
    height, width = smart_resize(img.height, img.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    # `img` itself when the size is kept: only read
    resized = resize_banded(img, (width, height), cfg.resample, bands)
    lut = _value_table(cfg.do_rescale, cfg.rescale_factor, cfg.do_normalize, cfg.image_mean, cfg.image_std, out_dtype)
    values = np.empty((3, height, width), dtype=lut.dtype)
    out, layout, grid = _patch_layout(values, cfg, out_dtype, pin_memory)
    rows_per_block = cfg.factor

    step = max(1, GIL_PIECE_PIXELS // (width * rows_per_block))  # merge-block rows per numpy call

    def fill(lo: int, hi: int) -> None:  # merge-block rows [lo, hi): look their values up, then lay them out
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            rows = slice(a * rows_per_block, b * rows_per_block)
            # the piece's pixels [rows, W, 3]: np.asarray of the whole image joins all its bytes in one GIL-held
            # copy (10-16 ms at 4096²); row pieces are shorter holds and, measured, 2.6x faster in total
            hwc = np.asarray(resized.crop((0, rows.start, width, rows.stop)))
            for c in range(3):
                # uint8 indices into 256 entries are always in range: "clip" changes nothing but skips take's
                # buffering
                np.take(lut[c], hwc[..., c], out=values[c, rows], mode="clip")
            np.copyto(layout[0][a:b], layout[1][a:b])

    _run_bands(fill, _spans(height // rows_per_block, bands if width * height >= BAND_MIN_PIXELS else 1))
    return out, grid


@functools.lru_cache(maxsize=32)
def _value_table(do_rescale: bool, rescale_factor: float, do_normalize: bool, mean: tuple, std: tuple,
                 out_dtype: torch.dtype) -> np.ndarray:
    """[C, 256]: what rescale + normalize make of each uint8 value, per channel. The table is computed with the
    same dtypes at each step as transformers (rescale in float64, normalize in float32), so looking values up is
    bit-identical to computing them, at one pass instead of five. Other dtypes: their bits, as int16."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (len(mean), 256))
    if do_rescale:
        values = (values.astype(np.float64) * rescale_factor).astype(np.float32)
    values = values.astype(np.float32)
    if do_normalize:
        values = (values - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    if out_dtype == torch.float32:
        return np.ascontiguousarray(values)
    return torch.from_numpy(np.ascontiguousarray(values)).to(out_dtype).view(torch.int16).numpy()


def _patch_layout(values: np.ndarray, cfg: ImageConfig, out_dtype: torch.dtype, pin_memory: bool
                  ) -> tuple[torch.Tensor, tuple[np.ndarray, np.ndarray], tuple[int, int, int]]:
    """For [C, H, W] values: the output [gh*gw, C*tp*p*p] (empty), and (destination, source) views of the same
    shape [gh/m, gw/m, m, m, C, tp, p, p], so that one strided copy of source into destination lays the patches
    out: rows walk merge blocks (block row, block col, in-block row, in-block col), each row holds channel, temporal
    copy, patch row, patch col. Both views start with the merge-block row, so bands of those copy independently."""
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    channels, height, width = values.shape
    grid_h, grid_w = height // p, width // p
    x = values.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, p, p]
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], tp, p, p))  # still images: repeat in time
    out = torch.empty((grid_h * grid_w, channels * tp * p * p), dtype=out_dtype, pin_memory=pin_memory)
    target = out.numpy() if out_dtype == torch.float32 else out.view(torch.int16).numpy()
    return out, (target.reshape(x.shape), x), (1, grid_h, grid_w)
