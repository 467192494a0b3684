"""MRoPE positions for a prompt with visual items, as transformers' get_rope_index of Qwen2.5-VL and Qwen3-VL
computes them.

Text tokens get t = h = w = a running index. A visual run (an image, a video, or one frame group of a Qwen3-VL
video) whose merged grid is (t, gh, gw) placed where the running index is `s` gets t = s + frame * interval,
h = s + row, w = s + col for each merged token (row-major); the running index then resumes at s + max(gh, gw)
(= the image's largest position + 1 for still images). The interval between frames is the family's position
function's choice (processor/family_rules.py). mrope_positions (images only) finds images by their runs of image
pad tokens, split by the token count of each grid (the same rule as transformers' mm_token_type_ids, where image
pads are type 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def mrope_positions(
    input_ids: list[int],
    grid_thws: list[tuple[int, int, int]],
    image_token_id: int,
    vision_start_token_id: int,
    merge_size: int,
) -> tuple[torch.Tensor, int]:
    """Return (positions [3, T] int64, delta) with delta = max position + 1 - T (0 for text only).

    The decode step at sequence index i uses position i + delta on all three axes.
    """
    segments = _image_segments(input_ids, grid_thws, image_token_id, vision_start_token_id, merge_size)
    runs = [VisualRun(off, t, gh // merge_size, gw // merge_size) for off, (t, gh, gw) in segments]
    return run_positions(len(input_ids), runs)


@dataclass(frozen=True)
class VisualRun:
    """One run of visual pad tokens: at `offset`, t frames of h x w merged tokens (row-major within a frame).

    time_interval spaces the frames on the temporal axis: Qwen2.5-VL videos use tokens_per_second *
    int(second_per_grid_t); images, and Qwen3-VL (whose video runs are single frame groups), use 1."""

    offset: int
    t: int
    h: int
    w: int
    time_interval: int = 1

    @property
    def num_tokens(self) -> int:
        return self.t * self.h * self.w


def run_positions(length: int, runs: list[VisualRun]) -> tuple[torch.Tensor, int]:
    """(positions [3, length] int64, delta) for a prompt whose visual runs (ascending offsets) are `runs`, by
    get_rope_index's rule: after a run the running position resumes at its start + max(h, w)."""
    pieces = []  # each [3, n]
    cursor, start = 0, 0  # cursor: index in the prompt; start: the running position
    for run in runs:
        pieces.append(_text_positions(run.offset - cursor, start))
        start += run.offset - cursor
        pieces.append(_visual_run_positions(run.t, run.h, run.w, start, run.time_interval))
        cursor = run.offset + run.num_tokens
        start += max(run.h, run.w)
    pieces.append(_text_positions(length - cursor, start))
    positions = torch.cat(pieces, dim=1)
    delta = int(positions.max()) + 1 - length if length else 0
    return positions, delta


def image_offsets(
    input_ids: list[int], grid_thws: list[tuple[int, int, int]], image_token_id: int, merge_size: int
) -> list[int]:
    """Index in input_ids of each image's first pad token, checking each run holds whole images."""
    offsets, i = [], 0
    grids = iter(grid_thws)
    while i < len(input_ids):
        if input_ids[i] != image_token_id:
            i += 1
            continue
        run_end = i
        while run_end < len(input_ids) and input_ids[run_end] == image_token_id:
            run_end += 1
        while i < run_end:  # adjacent images with no separator share one run
            t, gh, gw = next(grids)
            offsets.append(i)
            i += t * gh * gw // merge_size**2
        assert i == run_end, "image pad run does not match the image grids"
    assert len(offsets) == len(grid_thws), f"{len(offsets)} image pad runs for {len(grid_thws)} images"
    return offsets


def _image_segments(input_ids, grid_thws, image_token_id, vision_start_token_id, merge_size):
    offsets = image_offsets(input_ids, grid_thws, image_token_id, merge_size)
    for off in offsets:
        assert off > 0 and input_ids[off - 1] in (vision_start_token_id, image_token_id), (
            "an image's pad tokens must follow <|vision_start|>"
        )
    return list(zip(offsets, grid_thws))


def _text_positions(length: int, start: int) -> torch.Tensor:
    return (torch.arange(length, dtype=torch.int64) + start).expand(3, -1)  # [3, length]


def _visual_run_positions(t: int, h: int, w: int, start: int, time_interval: int = 1) -> torch.Tensor:
    """[3, t*h*w] positions of one visual run's merged tokens (frame * interval, row, col), offset by `start`."""
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, dtype=torch.int64) * time_interval, torch.arange(h, dtype=torch.int64),
        torch.arange(w, dtype=torch.int64), indexing="ij",
    )
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start
