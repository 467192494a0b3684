"""Benchmark datasets: synthetic (random images, synthetic video clips, random text), a folder of images or of
videos, or a JSONL of prompts.

Every dataset is seeded and materialised before the timed run, so encoding images never competes with the load
generator for the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlm_service.demo.images import ImageItem, ResolutionSampler, load_image_file, make_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
# Short common words: each is about one token for byte-level BPE vocabularies such as Qwen's (with its leading space).
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
    "but not what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may part "
    "over new sound take only little work know place year live me back give most very after thing our just name "
    "good sentence man think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind hand picture again change"
).split()


@dataclass(frozen=True)
class BenchRequest:
    """One request of a benchmark: a user turn with text and images, and its output length."""

    prompt: str
    images: tuple[ImageItem, ...] = ()
    max_tokens: int = 16
    min_tokens: int = 16
    videos: tuple = ()  # bench.videos.VideoItem, after the images in the user turn

    @property
    def pixels(self) -> int:
        return sum(im.pixels for im in self.images)


@dataclass(frozen=True)
class DatasetSpec:
    """What to build; mirrors the dataset flags of `vlm-service bench`."""

    kind: str = "synthetic"  # synthetic | folder | jsonl
    path: Path | None = None
    num_requests: int = 16
    seed: int = 0
    images_per_request: tuple[int, int] = (1, 1)  # inclusive range; (n, n) = fixed
    resolution: str = "720p"
    image_content: str = "noise"
    image_format: str = "jpeg"
    input_len: tuple[int, int] = (64, 64)  # text tokens of the user turn (approximate without a tokenizer)
    output_len: tuple[int, int] = (16, 16)  # min_tokens = max_tokens = drawn value
    tokenizer_path: Path | None = None  # a model dir or tokenizer.json: exact text lengths
    videos_per_request: int = 0  # kind synthetic: clips per request (video_folder: 1)
    video_seconds: float = 10.0
    video_resolution: str = "1280x720"  # WxH
    video_fps: float = 30.0  # the clip's own frame rate
    video_format: str = "mp4"  # mp4 (H.264) | webm (VP9) | mov
    video_sample_fps: float | None = None  # what the requests ask the server to sample; None = its default (2)
    unique_videos: bool = False  # a different clip (seed) per request, so the vision cache never hits
    extra: dict = field(default_factory=dict)


def parse_range(text: str | int) -> tuple[int, int]:
    """ "N" -> (N, N); "A-B" -> (A, B); both ends inclusive and >= 0."""
    lo, _, hi = str(text).partition("-")
    try:
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"bad range {text!r}: use N or A-B") from None
    if lo_i < 0 or hi_i < lo_i:
        raise ValueError(f"bad range {text!r}: need 0 <= A <= B")
    return lo_i, hi_i


def _draw(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


class TextMaker:
    """Random text of a given token length: exact with a tokenizer, else one word per token."""

    def __init__(self, tokenizer_path: Path | None = None):
        self.tokenizer = _load_tokenizer(tokenizer_path) if tokenizer_path else None

    def make(self, rng: np.random.Generator, num_tokens: int) -> str:
        if num_tokens <= 0:
            return ""
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=num_tokens + 8)]
        if self.tokenizer is None:
            return " ".join(words[:num_tokens])
        text = self.tokenizer.decode(self._ids(" ".join(words))[:num_tokens])
        for _ in range(8):  # a cut can re-merge differently on re-encoding: settle on the exact count
            ids = self._ids(text)
            if len(ids) == num_tokens:
                break
            text = self.tokenizer.decode(ids[:num_tokens]) if len(ids) > num_tokens else text + " the"
        return text

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def _load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def build_dataset(spec: DatasetSpec) -> list[BenchRequest]:
    """Materialise spec.num_requests requests, deterministic for a given seed."""
    rng = np.random.default_rng(spec.seed)
    texts = TextMaker(spec.tokenizer_path)
    if spec.kind == "synthetic":
        return [_synthetic_one(spec, rng, texts, i) for i in range(spec.num_requests)]
    if spec.kind == "folder":
        return _from_folder(spec, rng, texts)
    if spec.kind == "jsonl":
        return _from_jsonl(spec, rng)
    if spec.kind == "video_folder":
        return _from_video_folder(spec, rng, texts)
    raise ValueError(f"dataset must be synthetic, folder, jsonl or video_folder, not {spec.kind!r}")


def _clips(spec: DatasetSpec, index: int) -> tuple:
    from vlm_service.bench.videos import synthetic_video

    seeds = [index * spec.videos_per_request + k if spec.unique_videos else k
             for k in range(spec.videos_per_request)]
    return tuple(_cached(_VIDEO_CACHE, (spec.video_seconds, spec.video_resolution, spec.video_fps,
                                        spec.video_format, seed, spec.video_sample_fps),
                         lambda key: synthetic_video(*key[:4], seed=key[4], sample_fps=key[5])) for seed in seeds)


_VIDEO_CACHE: dict = {}


def _from_video_folder(spec: DatasetSpec, rng: np.random.Generator, texts: TextMaker) -> list[BenchRequest]:
    from vlm_service.bench.videos import folder_videos

    if spec.path is None or not Path(spec.path).is_dir():
        raise ValueError(f"--dataset video_folder needs --dataset-path pointing at a directory, got {spec.path}")
    videos = folder_videos(Path(spec.path), spec.video_sample_fps)
    out = []
    for i in range(spec.num_requests):
        n = _draw(rng, spec.output_len)
        out.append(BenchRequest(texts.make(rng, _draw(rng, spec.input_len)), (), n, n, (videos[i % len(videos)],)))
    return out


def _synthetic_one(spec: DatasetSpec, rng: np.random.Generator, texts: TextMaker, index: int = 0) -> BenchRequest:
    sampler = ResolutionSampler(spec.resolution)
    images = []
    for _ in range(_draw(rng, spec.images_per_request)):
        h, w = sampler.sample(rng)
        images.append(make_image(rng, h, w, spec.image_content, spec.image_format))
    out = _draw(rng, spec.output_len)
    videos = _clips(spec, index) if spec.videos_per_request else ()
    return BenchRequest(texts.make(rng, _draw(rng, spec.input_len)), tuple(images), out, out, videos)


def _from_folder(spec: DatasetSpec, rng: np.random.Generator, texts: TextMaker) -> list[BenchRequest]:
    if spec.path is None or not Path(spec.path).is_dir():
        raise ValueError(f"--dataset folder needs --dataset-path pointing at a directory, got {spec.path}")
    files = sorted(p for p in Path(spec.path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {spec.path}")
    order = [files[i] for i in rng.permutation(len(files))]
    cache: dict[Path, ImageItem] = {}
    requests, cursor = [], 0
    for _ in range(spec.num_requests):
        chosen = []
        for _ in range(_draw(rng, spec.images_per_request)):
            path = order[cursor % len(order)]
            cursor += 1
            chosen.append(_cached(cache, path))
        out = _draw(rng, spec.output_len)
        requests.append(BenchRequest(texts.make(rng, _draw(rng, spec.input_len)), tuple(chosen), out, out))
    return requests


def _cached(cache: dict, key, load=load_image_file):
    if key not in cache:
        cache[key] = load(key)
    return cache[key]


def _from_jsonl(spec: DatasetSpec, rng: np.random.Generator) -> list[BenchRequest]:
    """Lines of {"prompt": str, "images": [paths], optional "max_tokens": int}; paths relative to the file."""
    if spec.path is None or not Path(spec.path).is_file():
        raise ValueError(f"--dataset jsonl needs --dataset-path pointing at a file, got {spec.path}")
    base = Path(spec.path).parent
    rows = [json.loads(line) for line in Path(spec.path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{spec.path} has no prompts")
    requests = []
    for i in range(spec.num_requests):
        row = rows[i % len(rows)]
        images = tuple(load_image_file(base / p) for p in row.get("images", []))
        out = int(row.get("max_tokens") or _draw(rng, spec.output_len))
        requests.append(BenchRequest(str(row["prompt"]), images, out, out))
    return requests
