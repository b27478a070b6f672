"""Frame and pixel budgets: `VisionConfig` merged with a sample's `MediaOptions`, and Qwen's rules.

The rules are qwen-vl-utils' (the reference Qwen-VL preprocessing), called rather than copied:
- sides are multiples of the model's `Grid.factor` (patch * spatial merge: 14 * 2 = 28 for
  Qwen2-VL / Qwen2.5-VL, 16 * 2 = 32 for Qwen3-VL / Qwen3.5), aspect ratio kept (`smart_resize`);
- frame counts are multiples of FRAME_FACTOR = 2 (the temporal patch of every Qwen-VL family), from
  `fps` or `nframes`, clamped to [min_frames, max_frames] and to the clip (`smart_nframes`);
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


@dataclass(frozen=True)
class Grid:
    """How a model cuts pixels into tokens: `patch` x `patch` pixel patches, `merge` x `merge` patches
    per language-model token, `temporal` frames per temporal patch. The default is Qwen2-VL /
    Qwen2.5-VL's (the default model's); a prompt encoder takes its processor's (`Grid.of`)."""

    patch: int = 14
    merge: int = 2
    temporal: int = FRAME_FACTOR

    @property
    def factor(self) -> int:
        """Side multiple of a resized image: one merged token covers factor x factor pixels."""
        return self.patch * self.merge

    @classmethod
    def of(cls, processor) -> "Grid":
        """The grid of a Qwen-VL processor (its image and video processors must agree)."""
        parts = [p for p in (processor.image_processor, getattr(processor, "video_processor", None)) if p is not None]
        grids = {cls(int(p.patch_size), int(p.merge_size), int(p.temporal_patch_size)) for p in parts}
        if len(grids) != 1:
            raise ValueError(f"the processor's image and video processors cut pixels differently: {sorted(grids)}")
        grid = grids.pop()
        if grid.temporal != FRAME_FACTOR:  # frame sampling (qwen-vl-utils) assumes pairs of frames
            raise ValueError(f"temporal patch {grid.temporal} is not supported (frames are sampled in pairs)")
        return grid


@dataclass(frozen=True)
class Budget:
    """The settings one media item is decoded with (sample overrides applied), and the grid its sizes
    snap to (part of the media cache key: another model's grid gives other frames)."""

    fps: float
    nframes: int | None
    min_frames: int
    max_frames: int
    min_pixels: int
    max_pixels: int
    total_pixels: int | None
    start: float | None
    end: float | None
    grid: Grid


def resolve_budget(options: MediaOptions, vision: VisionConfig, grid: Grid = Grid()) -> Budget:
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
        grid=grid,
    )


def resize_to(height: int, width: int, min_pixels: int, max_pixels: int, grid: Grid = Grid()) -> tuple[int, int]:
    """Qwen's smart_resize to multiples of the grid factor; never a zero side (extreme aspect ratios
    floor to 0 there)."""
    f = grid.factor
    h, w = smart_resize(height, width, f, min_pixels=min_pixels, max_pixels=max(min_pixels, max_pixels))
    return max(f, h), max(f, w)


def frame_size(height: int, width: int, nframes: int | None, budget: Budget) -> tuple[int, int]:
    """Target (H, W) of an image (`nframes` None) or of each of a video's `nframes` frames."""
    max_pixels = budget.max_pixels
    if nframes is not None and budget.total_pixels is not None:
        # qwen_vl_utils.fetch_video: the per-frame cap is an even share of the video budget
        share = budget.total_pixels / nframes * FRAME_FACTOR
        max_pixels = max(min(max_pixels, share), int(budget.min_pixels * 1.05))
    return resize_to(height, width, budget.min_pixels, int(max_pixels), budget.grid)


@dataclass
class FramePlan:
    indices: list[int]  # source frame indices to decode, len a multiple of FRAME_FACTOR
    sampled_fps: float  # frames per second of the sampled clip (what second_per_grid_ts needs)
    duration: float  # seconds of the whole source
    clip_frames: int  # source frames in the [start, end] window (sampled_fps = len(indices) / clip_frames * fps)


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
    return FramePlan(indices=indices, sampled_fps=n / count * source_fps, duration=total / source_fps, clip_frames=count)


def vision_tokens(num_frames: int, height: int, width: int, grid: Grid = Grid()) -> int:
    """Vision placeholders of one image (num_frames 1) or video: (T / temporal) * (H / factor) *
    (W / factor), T padded to a multiple of the temporal patch ((T/2) * (H/28) * (W/28) for Qwen2.5-VL)."""
    return math.ceil(num_frames / grid.temporal) * (height // grid.factor) * (width // grid.factor)


def shrink_to_fit(
    shapes: list[tuple[int, int, int]], min_pixels: list[int], available: int, grid: Grid = Grid()
) -> list[tuple[int, int]] | None:
    """Largest (H, W) per item (aspect kept, multiples of the grid factor, frames unchanged) whose
    vision tokens sum to at most `available`; None when even each item's `min_pixels` size does not fit.

    `shapes` are (T, H, W). Each round scales every item's pixel budget by the same factor, so
    images and videos give up resolution in proportion."""
    sizes = [(h, w) for _, h, w in shapes]
    for _ in range(32):
        need = sum(vision_tokens(t, h, w, grid) for (t, _, _), (h, w) in zip(shapes, sizes))
        if need <= available:
            return sizes
        if need == 0:  # no vision tokens to give up (no media): the text alone is over the limit
            return None
        scale = max(available, 0) / need
        new = [resize_to(h, w, lo, int(h * w * scale), grid) for (h, w), lo in zip(sizes, min_pixels)]
        if new == sizes:
            return None
        sizes = new
    return None
