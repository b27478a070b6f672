"""Frame and pixel budgets: `VisionConfig` merged with a sample's `MediaOptions`, and Qwen's rules.

The rules are qwen-vl-utils' (the reference Qwen2.5-VL preprocessing), called rather than copied:
- sides are multiples of FACTOR = 28 (patch 14 * spatial merge 2), aspect ratio kept (`smart_resize`);
- frame counts are multiples of FRAME_FACTOR = 2 (temporal patch), from `fps` or `nframes`,
  clamped to [min_frames, max_frames] and to the clip (`smart_nframes`);
- a video's `total_pixels` is shared by its frames two at a time, floored at 1.05 * min_pixels.

A sample's own options (a row's columns or a content item's keys) are capped where they are merged
(`resolve_budget`): frame counts (`nframes`, `min_frames`, `max_frames`) at
`vision.sample_max_frames`, per-frame pixels (`min_pixels`, `max_pixels`) at
`vision.sample_max_pixels`, `total_pixels` at their product. A row asking for 40 frames of 4K is
decoded at the ceilings, not at what it asked for; the dataset's own settings are not capped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from qwen_vl_utils.vision_process import (
    FRAME_FACTOR,
    calculate_video_frame_range,
    floor_by_factor,
    smart_nframes,
    smart_resize,
)

from mmgrpo.config import VisionConfig
from mmgrpo.processors.sample import MediaOptions

FACTOR = 28  # patch_size 14 * merge_size 2


@dataclass(frozen=True)
class Budget:
    """The settings one media item is decoded with (sample overrides applied)."""

    fps: float
    nframes: int | None
    min_frames: int
    max_frames: int
    min_pixels: int
    max_pixels: int
    total_pixels: int | None
    start: float | None
    end: float | None


def resolve_budget(options: MediaOptions, vision: VisionConfig) -> Budget:
    """Each field: the sample's value when set (capped at the `sample_max_*` ceilings, see the
    module docstring), else the dataset's. A sample `max_pixels` below the dataset `min_pixels`
    lowers the floor too (the sample asked for smaller frames)."""
    frames, pixels = vision.sample_max_frames, vision.sample_max_pixels
    ceilings = {"nframes": frames, "min_frames": frames, "max_frames": frames, "min_pixels": pixels,
                "max_pixels": pixels, "total_pixels": frames * pixels}

    def pick(name: str):
        value = getattr(options, name)
        if value is None:
            return getattr(vision, name)
        return min(value, ceilings[name]) if name in ceilings else value

    max_pixels = int(pick("max_pixels"))
    nframes, total_pixels = pick("nframes"), pick("total_pixels")
    return Budget(
        fps=float(pick("fps")),
        nframes=None if nframes is None else int(nframes),
        min_frames=int(pick("min_frames")),
        max_frames=int(pick("max_frames")),
        min_pixels=min(int(pick("min_pixels")), max_pixels),
        max_pixels=max_pixels,
        total_pixels=None if total_pixels is None else int(total_pixels),
        start=options.start,
        end=options.end,
    )


def resize_to(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's smart_resize with FACTOR; never a zero side (extreme aspect ratios floor to 0 there)."""
    h, w = smart_resize(height, width, FACTOR, min_pixels=min_pixels, max_pixels=max(min_pixels, max_pixels))
    return max(FACTOR, h), max(FACTOR, w)


def frame_size(height: int, width: int, nframes: int | None, budget: Budget) -> tuple[int, int]:
    """Target (H, W) of an image (`nframes` None) or of each of a video's `nframes` frames."""
    max_pixels = budget.max_pixels
    if nframes is not None and budget.total_pixels is not None:
        # qwen_vl_utils.fetch_video: the per-frame cap is an even share of the video budget
        share = budget.total_pixels / nframes * FRAME_FACTOR
        max_pixels = max(min(max_pixels, share), int(budget.min_pixels * 1.05))
    return resize_to(height, width, budget.min_pixels, int(max_pixels))


@dataclass
class FramePlan:
    indices: list[int]  # source frame indices to decode, len a multiple of FRAME_FACTOR
    sampled_fps: float  # frames per second of the sampled clip (what second_per_grid_ts needs)
    duration: float  # seconds of the whole source


def plan_frames(total: int, source_fps: float, budget: Budget) -> FramePlan:
    """Which frames to decode: qwen-vl-utils' clip range and `smart_nframes`, spread uniformly.

    `nframes` wins over `fps`; it is rounded to a multiple of 2 and clamped to [2, clip frames].
    A clip shorter than 2 frames repeats its frame (the processor would pad it the same way).
    Raises ValueError when `start`/`end` select nothing."""
    window = {k: v for k, v in (("video_start", budget.start), ("video_end", budget.end)) if v is not None}
    first, last, count = calculate_video_frame_range(window, total, source_fps)
    if count < FRAME_FACTOR:
        n = FRAME_FACTOR
    elif budget.nframes is not None:
        wanted = min(max(budget.nframes, FRAME_FACTOR), floor_by_factor(count, FRAME_FACTOR))
        n = smart_nframes({"nframes": wanted}, total_frames=count, video_fps=source_fps)
    else:
        ele = {"fps": budget.fps, "min_frames": budget.min_frames, "max_frames": budget.max_frames}
        n = smart_nframes(ele, total_frames=count, video_fps=source_fps)
    indices = torch.linspace(first, last, n).round().long().tolist()  # [n]
    return FramePlan(indices=indices, sampled_fps=n / count * source_fps, duration=total / source_fps)


def vision_tokens(num_frames: int, height: int, width: int) -> int:
    """LM tokens of one image (num_frames 1) or video: (T/2) * (H/28) * (W/28), T padded to even."""
    return math.ceil(num_frames / FRAME_FACTOR) * (height // FACTOR) * (width // FACTOR)


def shrink_to_fit(
    shapes: list[tuple[int, int, int]], min_pixels: list[int], available: int
) -> list[tuple[int, int]] | None:
    """Largest (H, W) per item (aspect kept, multiples of 28, frames unchanged) whose vision tokens
    sum to at most `available`; None when even each item's `min_pixels` size does not fit.

    `shapes` are (T, H, W). Each round scales every item's pixel budget by the same factor, so
    images and videos give up resolution in proportion."""
    sizes = [(h, w) for _, h, w in shapes]
    for _ in range(32):
        need = sum(vision_tokens(t, h, w) for (t, _, _), (h, w) in zip(shapes, sizes))
        if need <= available:
            return sizes
        if need == 0:  # no vision tokens to give up (no media): the text alone is over the limit
            return None
        scale = max(available, 0) / need
        new = [resize_to(h, w, lo, int(h * w * scale)) for (h, w), lo in zip(sizes, min_pixels)]
        if new == sizes:
            return None
        sizes = new
    return None
