"""Video parity helpers: demo checkpoints (tiny, built by transformers' classes), our processor's output turned into
transformers' model inputs, and our model run on the same processed tensors (the model half of video parity)."""

from __future__ import annotations

import io

import torch
from PIL import Image

from vlm_service.bench.clips import frame_pixels, make_clip
from vlm_service.engine.sequence import visual_spans
from vlm_service.models.common import MultimodalEmbeds
from vlm_service.types import ChatMessage, ImageInput, VideoInput

CLIPS = {  # name -> make_clip kwargs: a few seconds, odd sizes, VFR, WebM
    "mp4_odd": dict(seconds=3.0, width=97, height=61, fps=10.0, fmt="mp4", seed=1),
    "webm": dict(seconds=2.0, width=80, height=48, fps=12.0, fmt="webm", seed=2),
    "vfr": dict(width=64, height=90, fmt="mp4", seed=3, gop=4,
                vfr_ms=[0, 40, 100, 250, 260, 600, 1000, 1033, 1500, 2000, 2100, 2400, 2900]),
}


def clip(name: str) -> bytes:
    return make_clip(**CLIPS[name])


def png(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame_pixels(seed, w, h, seed)).save(buf, format="PNG")
    return buf.getvalue()


def chat(*parts) -> tuple[ChatMessage, ...]:
    """parts: str, ("image", bytes) or ("video", bytes) -> one user message."""
    content = []
    for p in parts:
        if isinstance(p, str):
            content.append(p)
        elif p[0] == "image":
            content.append(ImageInput(p[1]))
        else:
            content.append(VideoInput(data=p[1]))
    return (ChatMessage("user", tuple(content)),)


def hf_model_inputs(processed, spec_ids: dict, second_per_grid_ts: list[float] | None = None) -> dict:
    """transformers' model kwargs for our processor's output: ids, mm_token_type_ids (1 image, 2 video), pixels."""
    ids = torch.tensor(processed.input_ids)
    types = torch.zeros_like(ids)
    types[ids == spec_ids["image"]] = 1
    types[ids == spec_ids["video"]] = 2
    kw = {"input_ids": ids[None], "mm_token_type_ids": types[None]}
    for kind, pix, grid in (("image", "pixel_values", "image_grid_thw"),
                            ("video", "pixel_values_videos", "video_grid_thw")):
        items = [it for it in processed.visuals if it.kind == kind]
        if items:
            kw[pix] = torch.cat([it.pixel_values for it in items])
            kw[grid] = torch.tensor([it.grid_thw for it in items])
    if second_per_grid_ts is not None:
        kw["second_per_grid_ts"] = torch.tensor(second_per_grid_ts)
    return kw


def our_embeds(model, processed, device: str = "cpu") -> MultimodalEmbeds | None:
    """Encode every visual item once and place its rows on its spans, as the model runner does."""
    if not processed.visuals:
        return None
    dtype = next(model.parameters()).dtype
    pixels = torch.cat([it.pixel_values for it in processed.visuals]).to(device, dtype)
    grid = torch.tensor([it.grid_thw for it in processed.visuals])
    per_item = model.encode_images(pixels, grid)
    mask = torch.zeros(len(processed.input_ids), dtype=torch.bool)
    rows, deep = [], []
    for span in visual_spans(processed):
        emb, ds = per_item[span.item]
        lo, hi = span.embed_start, span.embed_start + span.num_tokens
        mask[span.offset:span.end] = True
        rows.append(emb[lo:hi])
        deep.append([d[lo:hi] for d in ds])
    deepstack = [torch.cat(layer) for layer in zip(*deep)] if deep and deep[0] else None
    return MultimodalEmbeds(torch.cat(rows), mask.to(device), deepstack)
