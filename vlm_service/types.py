"""Internal messages between server, processor and engine: no proto, no CUDA.

Flow: server/convert builds a `Request`; the processor turns it into a `ProcessedInput`; the engine streams
`TokenDelta`s and ends with exactly one `Finished`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Unset values mean: greedy (temperature 0), no top-k/top-p/min-p, no penalty, max_tokens up to the context."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    mime_type: str = ""


@dataclass(frozen=True)
class VideoInput:
    """A video: encoded bytes (MP4 / WebM / MOV; mime_type empty = sniff), or already-extracted frames (encoded
    images, all one size) with per-frame timestamps (seconds) or their source fps. fps / max_frames: the request's
    sampling, None = the checkpoint's default (both capped by the server)."""

    data: bytes = b""
    mime_type: str = ""
    frames: tuple[ImageInput, ...] = ()
    timestamps: tuple[float, ...] = ()
    frames_fps: float = 0.0
    fps: float | None = None
    max_frames: int | None = None


VisualInput = Union[ImageInput, VideoInput]  # one visual item of a prompt
ContentPart = Union[str, ImageInput, VideoInput]


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: tuple[ContentPart, ...]


@dataclass(frozen=True)
class Request:
    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = SamplingParams()
    arrival_time: float = 0.0  # time.monotonic() when the server received it


@dataclass
class ProcessedVisual:
    """One preprocessed visual item (an image, or a video's frames), in the exact layout of transformers' Qwen2VL
    image / video processors (pixel_values / pixel_values_videos, image_grid_thw / video_grid_thw)."""

    pixel_values: torch.Tensor  # [num_patches, C * temporal_patch * patch * patch]: float32 (CPU), or the
    # model dtype on the host (pinned) or already on the device (--preprocess-device cuda, gpu_preprocess.py)
    grid_thw: tuple[int, int, int]  # (t, h, w) in patches, before the 2x2 merge
    content_hash: str  # sha256 of the bytes (+ a video's sampling): keys the vision and prefix caches
    offset: int  # index in input_ids of this item's first pad token
    num_tokens: int  # pad tokens = t * h * w // merge_size**2
    kind: str = "image"  # "image" | "video"
    # the prompt runs of its pad tokens, (offset, length) each; empty = one run (offset, num_tokens). A Qwen3-VL
    # video has one run per temporal group, separated by timestamp text; its embeddings fill the runs in order.
    runs: tuple[tuple[int, int], ...] = ()

    def prompt_runs(self) -> list[tuple[int, int, int]]:
        """(offset, length, index of the run's first embedding row) of each run of pad tokens."""
        out, start = [], 0
        for off, n in self.runs or ((self.offset, self.num_tokens),):
            out.append((off, n, start))
            start += n
        return out


ProcessedImage = ProcessedVisual  # the former name


@dataclass
class ProcessedInput:
    input_ids: list[int]
    visuals: list[ProcessedVisual]  # the prompt's images and videos, in prompt order
    positions: torch.Tensor  # [3, len(input_ids)] int64 MRoPE positions (t, h, w)
    mrope_delta: int  # decode position of token at index i is i + mrope_delta on all three axes
    preprocess_ms: float = 0.0
    decode_ms: float = 0.0  # the part of preprocess_ms spent decoding images and videos

    @property
    def images(self) -> list[ProcessedVisual]:
        """The former name of `visuals` (read-only)."""
        return self.visuals

    @property
    def num_visual_tokens(self) -> int:
        """Pad tokens of all images and videos (reported as Usage.image_tokens)."""
        return sum(item.num_tokens for item in self.visuals)


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS or a stop token id
    LENGTH = "length"  # max_tokens or the context limit
    STOP_SEQUENCE = "stop_sequence"  # a stop string matched
    ABORT = "abort"


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    request_id: str
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    image_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    ttft_ms: float = 0.0
    e2e_ms: float = 0.0
    decode_ms: float = 0.0  # part of preprocess_ms


@dataclass(frozen=True)
class Finished:
    request_id: str
    finish_reason: FinishReason
    matched_stop: str = ""
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)


EngineOutput = Union[TokenDelta, Finished]
