"""The processor: chat messages -> token ids, preprocessed images and MRoPE positions (CPU only).

Token-exact with transformers: the checkpoint's chat template is rendered with the generation prompt as
`processor.apply_chat_template(messages, add_generation_prompt=True)` does, the text is tokenized as the HF processor
does, and each `<|image_pad|>` becomes grid_t * grid_h * grid_w / merge_size**2 pad tokens (done on ids, which gives
the same ids as expanding the text, because the pad is a special token the tokenizer splits on). Videos follow
their family's processor (visual_items.py): `<|video_pad|>` runs, and for Qwen3-VL per-group timestamp text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import torch

from vlm_service.errors import InvalidInput
from vlm_service.processor.budget import DecodeBudget, RequestCost, decode_bytes
from vlm_service.processor.image import decode_image, probe_image
from vlm_service.processor.positions import run_positions
from vlm_service.processor.template import TemplateTokenizer, to_hf_conversation  # noqa: F401 (re-exported)
from vlm_service.processor.tokenizer import load_tokenizer, special_token_ids
from vlm_service.processor.video import VideoLimits
from vlm_service.processor.video_config import VideoConfig
from vlm_service.processor.vision import ImageConfig, preprocess_image, smart_resize
from vlm_service.processor.visual_items import PreparedVisual, expand_pads, expand_video_text, prepare_video
from vlm_service.types import ChatMessage, ImageInput, ProcessedInput, ProcessedVisual, VideoInput

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
# Markup a user's text may not contain: it would be read as image placeholders and break the image alignment.
_RESERVED_TEXT = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def count_images(messages: tuple[ChatMessage, ...]) -> int:
    """Number of image parts, counted without decoding anything (for admission checks)."""
    return sum(isinstance(part, ImageInput) for msg in messages for part in msg.content)


def count_videos(messages: tuple[ChatMessage, ...]) -> int:
    """Number of video parts, counted without decoding anything."""
    return sum(isinstance(part, VideoInput) for msg in messages for part in msg.content)


class Processor:
    """Turns a chat into a `ProcessedInput` for one checkpoint (tokenizer + image settings)."""

    def __init__(self, tokenizer, image_config: ImageConfig, max_pixels_limit: int = 40_000_000,
                 max_images: int = 8, pixel_dtype: torch.dtype = torch.float32, pin_pixels: bool = False,
                 trust_client_special_tokens: bool = False, max_request_pixels: int = 0,
                 decode_budget: DecodeBudget | None = None, preprocess_device: torch.device | None = None,
                 video_config: VideoConfig | None = None, video_limits: VideoLimits = VideoLimits(),
                 max_videos: int = 4, max_visual_tokens: int = 0,
                 video_preprocess_device: torch.device | None = None):
        """pixel_dtype / pin_pixels: what a CUDA server wants to copy to the device (the model dtype, pinned
        memory), written directly by the patch layout copy; float32 (the default) is transformers' layout.
        trust_client_special_tokens: parse special tokens inside client text (off: they are plain text).
        max_request_pixels / decode_budget: the cost limits of processor/budget.py (0 / None = none).
        preprocess_device: decode and preprocess images there (gpu_preprocess.py) instead of on the host.
        video_config: the checkpoint's video settings (None: the Qwen3-VL defaults with the image patch sizes);
        max_visual_tokens bounds the image + video tokens of one request (0 = no bound).
        video_preprocess_device: resize / normalise / lay out video frames there (gpu_video.py); None: where
        preprocess_device says (None there too: on the host)."""
        self.tokenizer = tokenizer
        self.video_config = video_config or VideoConfig(patch_size=image_config.patch_size,
                                                        temporal_patch_size=image_config.temporal_patch_size,
                                                        merge_size=image_config.merge_size)
        self.video_limits, self.max_videos, self.max_visual_tokens = video_limits, max_videos, max_visual_tokens
        self.pixel_dtype, self.pin_pixels = pixel_dtype, pin_pixels
        self.gpu_preprocessor = _on_device("image", image_config, preprocess_device, pixel_dtype)
        self.gpu_video = _on_device("video", self.video_config, video_preprocess_device or preprocess_device,
                                    pixel_dtype)
        self.image_config = image_config
        self.max_pixels_limit = max_pixels_limit
        self.max_images = max_images
        self.token_ids = special_token_ids(tokenizer)
        self.video_pad_id = int(tokenizer.convert_tokens_to_ids("<|video_pad|>"))
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        self.template = TemplateTokenizer(tokenizer, trust_client_special_tokens)
        self.max_request_pixels = max_request_pixels
        self.decode_budget = decode_budget or DecodeBudget(0)
        self._text_lane: ThreadPoolExecutor | None = None

    @classmethod
    def from_pretrained(cls, model_dir: Path, max_pixels_limit: int = 40_000_000, max_images: int = 8,
                        chat_template: str | Path | None = None, **pixels) -> "Processor":
        """Load the tokenizer, image and video settings of an HF-format checkpoint directory (pixels: pixel_dtype,
        pin_pixels, trust_client_special_tokens, the cost limits, video_limits, max_videos, max_visual_tokens,
        preprocess_device, video_preprocess_device);
        `chat_template`: a jinja file that replaces the checkpoint's template."""
        return cls(load_tokenizer(model_dir, chat_template), ImageConfig.from_pretrained(model_dir), max_pixels_limit, max_images,
                   video_config=VideoConfig.from_pretrained(model_dir), **pixels)

    async def process_async(self, messages: tuple[ChatMessage, ...], executor: Executor | None) -> ProcessedInput:
        """`process` on `executor` after the cost checks: the per-request pixel limit, then a wait (holding no
        thread) for the images' share of the decode budget. Chats without images run on a lane of their own, so
        they never queue behind image decodes."""
        self.validate(messages)
        cost = self.cost(messages)
        cost.check_pixels(self.max_request_pixels)
        loop = asyncio.get_running_loop()
        if cost.images == 0 and count_videos(messages) == 0:  # videos decode in the pool like images
            return await loop.run_in_executor(self._text_executor(), self.process, messages)
        async with self.decode_budget.hold(cost.decode_bytes):
            return await loop.run_in_executor(executor, self.process, messages)

    def cost(self, messages: tuple[ChatMessage, ...]) -> RequestCost:
        """Declared pixels and estimated decode bytes of the images, from their headers (raises InvalidImage for
        what decode would refuse anyway: bad header, mime mismatch, over max_pixels_limit)."""
        images = pixels = nbytes = 0
        cfg = self.image_config
        for i, msg in enumerate(messages):
            for j, part in enumerate(msg.content):
                if isinstance(part, ImageInput):
                    w, h, bands = probe_image(part.data, part.mime_type, self.max_pixels_limit,
                                              f"messages[{i}].content[{j}].image")
                    rh, rw = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
                    images, pixels, nbytes = images + 1, pixels + w * h, nbytes + decode_bytes(w, h, bands, rh * rw)
        return RequestCost(images=images, pixels=pixels, decode_bytes=nbytes)

    def _text_executor(self) -> ThreadPoolExecutor:
        if self._text_lane is None:  # created on first use (the event loop's thread only)
            self._text_lane = ThreadPoolExecutor(2, thread_name_prefix="preprocess-text")
        return self._text_lane

    def process(self, messages: tuple[ChatMessage, ...]) -> ProcessedInput:
        """Validate, decode and preprocess images, render and tokenize the chat, compute positions.

        Raises InvalidInput / InvalidImage naming the field at fault (e.g. messages[0].content[1].image).
        """
        started = time.perf_counter()
        self.validate(messages)
        items = self._preprocess_visuals(messages)
        self._check_visual_tokens(items)
        pad_ids = {"image": self.token_ids["image_pad"], "video": self.video_pad_id}
        input_ids, runs = expand_pads(self._tokenize(messages, items), items, pad_ids, self.image_config.merge_size)
        return self._assemble(input_ids, items, runs, started)

    def validate(self, messages: tuple[ChatMessage, ...]) -> None:
        """Structural checks only (roles, empty content, reserved markup, image count); decodes nothing."""
        if not messages:
            raise InvalidInput("messages must not be empty", field="messages")
        n_images = count_images(messages)
        if n_images > self.max_images:
            raise InvalidInput(f"{n_images} images, over the limit of {self.max_images} per request",
                               field="messages")
        if count_videos(messages) > self.max_videos:
            raise InvalidInput(f"{count_videos(messages)} videos, over the limit of {self.max_videos} per request",
                               field="messages")
        for i, msg in enumerate(messages):
            _validate_message(i, msg)

    def _preprocess_visuals(self, messages) -> list[PreparedVisual]:
        """Every image and video, decoded and preprocessed, in prompt order."""
        out: list[PreparedVisual] = []
        for i, msg in enumerate(messages):
            for j, part in enumerate(msg.content):
                if isinstance(part, ImageInput):
                    field = f"messages[{i}].content[{j}].image"
                    pixel_values, grid, decode_ms = self._image_pixels(part, field)
                    out.append(PreparedVisual(pixel_values, grid, hashlib.sha256(part.data).hexdigest(),
                                              decode_ms=decode_ms))
                elif isinstance(part, VideoInput):
                    left = self._tokens_left(out) if self.max_visual_tokens else 0
                    out.append(prepare_video(part, self.video_config, self.video_limits,
                                             f"messages[{i}].content[{j}].video", self.pixel_dtype, self.pin_pixels,
                                             max_tokens=left, gpu=self.gpu_video))
        return out

    def _tokens_left(self, items: list[PreparedVisual]) -> int:
        """Visual tokens the rest of the request may take (at least 1: 0 would mean no limit downstream)."""
        used = sum(it.num_tokens(self.image_config.merge_size) for it in items)
        return max(self.max_visual_tokens - used, 1)

    def _check_visual_tokens(self, items: list[PreparedVisual]) -> None:
        total = sum(it.num_tokens(self.image_config.merge_size) for it in items)
        if self.max_visual_tokens and total > self.max_visual_tokens:
            raise InvalidInput(f"images and videos make {total} visual tokens, over the limit of "
                               f"{self.max_visual_tokens} per request", field="messages")

    def _image_pixels(self, part: ImageInput, field: str) -> tuple[torch.Tensor, tuple[int, int, int], float]:
        """(pixel_values, grid_thw, host decode ms) of one image: on the GPU preprocessor when there is one (its
        decode is not timed apart: 0), else decoded and preprocessed on the host."""
        if self.gpu_preprocessor is not None:
            pixel_values, grid = self.gpu_preprocessor(part.data, part.mime_type, self.max_pixels_limit, field)
            return pixel_values, grid, 0.0
        started = time.perf_counter()
        img = decode_image(part.data, part.mime_type, self.max_pixels_limit, field)
        decode_ms = (time.perf_counter() - started) * 1000.0
        return (*preprocess_image(img, self.image_config, self.pixel_dtype, self.pin_pixels), decode_ms)

    def _tokenize(self, messages, items: list[PreparedVisual] = ()) -> list[int]:
        """The chat's ids (client text plain unless trusted); Qwen3-VL's videos get their per-group timestamps."""
        transform = None
        if any(it.timing.group_times for it in items):  # the family's position function asked for them
            transform = lambda text: expand_video_text(text, list(items))  # noqa: E731
        return self.template.encode(messages, transform)

    def _assemble(self, input_ids, items: list[PreparedVisual], runs, started) -> ProcessedInput:
        positions, delta = run_positions(len(input_ids), sorted((r for rs in runs for r in rs),
                                                                key=lambda r: r.offset))
        processed = [
            ProcessedVisual(pixel_values=it.pixel_values, grid_thw=it.grid, content_hash=it.content_hash,
                           offset=rs[0].offset, num_tokens=sum(r.num_tokens for r in rs), kind=it.kind,
                           runs=tuple((r.offset, r.num_tokens) for r in rs) if len(rs) > 1 else ())
            for it, rs in zip(items, runs)
        ]
        return ProcessedInput(input_ids=input_ids, visuals=processed, positions=positions, mrope_delta=delta,
                              preprocess_ms=(time.perf_counter() - started) * 1000.0,
                              decode_ms=sum(it.decode_ms for it in items))


def _on_device(kind: str, config, device: torch.device | None, dtype: torch.dtype):
    """A GpuPreprocessor (kind "image") or GpuVideoPreprocessor ("video") on `device`, or None for the host path
    (also, logged, when it cannot start there: serving with the host path beats not serving)."""
    if device is None:
        return None
    if kind == "image":
        from vlm_service.processor.gpu_preprocess import GpuPreprocessor as starter
    else:
        from vlm_service.processor.gpu_video import GpuVideoPreprocessor as starter
    try:
        return starter(config, device, dtype)
    except Exception:
        log.exception("GPU %s preprocessing on %s failed to start; %ss are preprocessed on the host", kind, device,
                      kind)
        return None


def _validate_message(i: int, msg: ChatMessage) -> None:
    if msg.role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {msg.role!r}", field=f"messages[{i}].role")
    if not any(isinstance(p, (ImageInput, VideoInput)) or p for p in msg.content):
        raise InvalidInput("message content is empty", field=f"messages[{i}].content")
    for j, part in enumerate(msg.content):
        if isinstance(part, str) and any(tok in part for tok in _RESERVED_TEXT):
            raise InvalidInput("text must not contain vision placeholder tokens",
                               field=f"messages[{i}].content[{j}].text")
