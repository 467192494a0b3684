"""The processor: chat messages -> token ids, preprocessed images and MRoPE positions (CPU only).

Token-exact with transformers: the checkpoint's chat template is rendered with the generation prompt as
`processor.apply_chat_template(messages, add_generation_prompt=True)` does, the text is tokenized as the HF processor
does, and each `<|image_pad|>` becomes grid_t * grid_h * grid_w / merge_size**2 pad tokens (done on ids, which gives
the same ids as expanding the text, because the pad is a special token the tokenizer splits on).
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
from vlm_service.processor.positions import image_offsets, mrope_positions
from vlm_service.processor.template import TemplateTokenizer, to_hf_conversation  # noqa: F401 (re-exported)
from vlm_service.processor.tokenizer import load_tokenizer, special_token_ids
from vlm_service.processor.vision import ImageConfig, preprocess_image, smart_resize
from vlm_service.types import ChatMessage, ImageInput, ProcessedImage, ProcessedInput

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
# Markup a user's text may not contain: it would be read as image placeholders and break the image alignment.
_RESERVED_TEXT = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def count_images(messages: tuple[ChatMessage, ...]) -> int:
    """Number of image parts, counted without decoding anything (for admission checks)."""
    return sum(isinstance(part, ImageInput) for msg in messages for part in msg.content)


class Processor:
    """Turns a chat into a `ProcessedInput` for one checkpoint (tokenizer + image settings)."""

    def __init__(self, tokenizer, image_config: ImageConfig, max_pixels_limit: int = 40_000_000,
                 max_images: int = 8, pixel_dtype: torch.dtype = torch.float32, pin_pixels: bool = False,
                 trust_client_special_tokens: bool = False, max_request_pixels: int = 0,
                 decode_budget: DecodeBudget | None = None, preprocess_device: torch.device | None = None):
        """pixel_dtype / pin_pixels: what a CUDA server wants to copy to the device (the model dtype, pinned
        memory), written directly by the patch layout copy; float32 (the default) is transformers' layout.
        trust_client_special_tokens: parse special tokens inside client text (off: they are plain text).
        max_request_pixels / decode_budget: the cost limits of processor/budget.py (0 / None = none).
        preprocess_device: decode and preprocess images there (gpu_preprocess.py) instead of on the host."""
        self.tokenizer = tokenizer
        self.pixel_dtype, self.pin_pixels = pixel_dtype, pin_pixels
        self.gpu_preprocessor = _gpu_preprocessor(image_config, preprocess_device, pixel_dtype)
        self.image_config = image_config
        self.max_pixels_limit = max_pixels_limit
        self.max_images = max_images
        self.token_ids = special_token_ids(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        self.template = TemplateTokenizer(tokenizer, trust_client_special_tokens)
        self.max_request_pixels = max_request_pixels
        self.decode_budget = decode_budget or DecodeBudget(0)
        self._text_lane: ThreadPoolExecutor | None = None

    @classmethod
    def from_pretrained(cls, model_dir: Path, max_pixels_limit: int = 40_000_000, max_images: int = 8,
                        **pixels) -> "Processor":
        """Load the tokenizer and image settings of an HF-format checkpoint directory (pixels: pixel_dtype,
        pin_pixels, trust_client_special_tokens)."""
        return cls(load_tokenizer(model_dir), ImageConfig.from_pretrained(model_dir), max_pixels_limit, max_images,
                   **pixels)

    async def process_async(self, messages: tuple[ChatMessage, ...], executor: Executor | None) -> ProcessedInput:
        """`process` on `executor` after the cost checks: the per-request pixel limit, then a wait (holding no
        thread) for the images' share of the decode budget. Chats without images run on a lane of their own, so
        they never queue behind image decodes."""
        self.validate(messages)
        cost = self.cost(messages)
        cost.check_pixels(self.max_request_pixels)
        loop = asyncio.get_running_loop()
        if cost.images == 0:
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
        images = self._preprocess_images(messages)
        input_ids = self._expand_pads(self._tokenize(messages), [grid for _, grid, _ in images])
        return self._assemble(input_ids, images, started)

    def validate(self, messages: tuple[ChatMessage, ...]) -> None:
        """Structural checks only (roles, empty content, reserved markup, image count); decodes nothing."""
        if not messages:
            raise InvalidInput("messages must not be empty", field="messages")
        n_images = count_images(messages)
        if n_images > self.max_images:
            raise InvalidInput(f"{n_images} images, over the limit of {self.max_images} per request",
                               field="messages")
        for i, msg in enumerate(messages):
            _validate_message(i, msg)

    def _preprocess_images(self, messages):
        """[(pixel_values, grid_thw, sha256 hex)] in prompt order."""
        out = []
        for i, msg in enumerate(messages):
            for j, part in enumerate(msg.content):
                if isinstance(part, ImageInput):
                    field = f"messages[{i}].content[{j}].image"
                    pixel_values, grid = self._image_pixels(part, field)
                    out.append((pixel_values, grid, hashlib.sha256(part.data).hexdigest()))
        return out

    def _image_pixels(self, part: ImageInput, field: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(pixel_values, grid_thw) of one image: on the GPU preprocessor when there is one, else on the host."""
        if self.gpu_preprocessor is not None:
            return self.gpu_preprocessor(part.data, part.mime_type, self.max_pixels_limit, field)
        img = decode_image(part.data, part.mime_type, self.max_pixels_limit, field)
        return preprocess_image(img, self.image_config, self.pixel_dtype, self.pin_pixels)

    def _tokenize(self, messages) -> list[int]:
        return self.template.encode(messages)

    def _expand_pads(self, ids: list[int], grids: list[tuple[int, int, int]]) -> list[int]:
        pad = self.token_ids["image_pad"]
        n_pads = sum(1 for t in ids if t == pad)
        if n_pads != len(grids):
            raise InvalidInput(f"the chat template produced {n_pads} image placeholders for {len(grids)} images",
                               field="messages")
        merge = self.image_config.merge_size**2
        counts = iter(t * h * w // merge for t, h, w in grids)
        out: list[int] = []
        for token in ids:
            out.extend([pad] * next(counts) if token == pad else [token])
        return out

    def _assemble(self, input_ids, images, started) -> ProcessedInput:
        grids = [grid for _, grid, _ in images]
        merge = self.image_config.merge_size
        offsets = image_offsets(input_ids, grids, self.token_ids["image_pad"], merge)
        positions, delta = mrope_positions(
            input_ids, grids, self.token_ids["image_pad"], self.token_ids["vision_start"], merge
        )
        processed = [
            ProcessedImage(pixel_values=pv, grid_thw=grid, content_hash=digest, offset=off,
                           num_tokens=grid[0] * grid[1] * grid[2] // merge**2)
            for (pv, grid, digest), off in zip(images, offsets)
        ]
        return ProcessedInput(input_ids=input_ids, images=processed, positions=positions, mrope_delta=delta,
                              preprocess_ms=(time.perf_counter() - started) * 1000.0)


def _gpu_preprocessor(image_config: ImageConfig, device: torch.device | None, dtype: torch.dtype):
    """A GpuPreprocessor on `device`, or None for the host path (also, logged, when it cannot start there)."""
    if device is None:
        return None
    from vlm_service.processor.gpu_preprocess import GpuPreprocessor

    try:
        return GpuPreprocessor(image_config, device, dtype)
    except Exception:  # serve with the host path rather than not at all
        log.exception("GPU preprocessing on %s failed to start; images are preprocessed on the host", device)
        return None


def _validate_message(i: int, msg: ChatMessage) -> None:
    if msg.role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {msg.role!r}", field=f"messages[{i}].role")
    if not any(isinstance(p, ImageInput) or p for p in msg.content):
        raise InvalidInput("message content is empty", field=f"messages[{i}].content")
    for j, part in enumerate(msg.content):
        if isinstance(part, str) and any(tok in part for tok in _RESERVED_TEXT):
            raise InvalidInput("text must not contain vision placeholder tokens",
                               field=f"messages[{i}].content[{j}].text")
