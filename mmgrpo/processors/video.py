"""Videos: decode the frames ourselves (decord, OpenCV when decord fails), sample, resize.

transformers 5.x can only open video files through torchcodec (which needs a system FFmpeg), so the processor gets
our uint8 frames, already at the budget. A source is a video file, a folder of frame images, or a
list of frame paths. Decoders can return garbage instead of failing on truncated files, so every
decode is checked (frame count, not all black) and a failed decord read is retried with OpenCV.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from torchvision.transforms import InterpolationMode

from mmgrpo.config import VisionConfig
from mmgrpo.processors.budget import Budget, FramePlan, Grid, frame_size, plan_frames, resolve_budget
from mmgrpo.processors.image import IMAGE_EXTENSIONS, check_file, load_image
from mmgrpo.processors.sample import Media, MediaError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")


@dataclass
class Frames:
    frames: torch.Tensor  # [T, 3, H, W] uint8, resized to the budget
    fps: float  # frames per second of the sampled clip
    source_fps: float  # of the file (frame lists: the configured fps, see FrameListReader)
    duration: float  # seconds of the source
    # source frame index of each of the T frames and the frames of the clip window they were sampled
    # from: a frame's time is index / source_fps (Qwen3-VL writes it into the prompt)
    indices: tuple[int, ...] = ()
    clip_frames: int = 0


class Reader(Protocol):
    total: int  # frames in the source
    fps: float

    def read(self, indices: list[int]) -> np.ndarray:  # [n, H, W, 3] uint8 RGB
        ...


class DecordReader:
    def __init__(self, path: str):
        import decord  # imported here: absent on some platforms, where OpenCV serves alone

        self.path = path
        self.vr = decord.VideoReader(path, ctx=decord.cpu(0))
        self.total = len(self.vr)
        self.fps = float(self.vr.get_avg_fps())

    def read(self, indices: list[int]) -> np.ndarray:
        return self.vr.get_batch(indices).asnumpy()  # [n, H, W, 3]


class OpenCVReader:
    """Sequential reads (grab to skip, retrieve to keep): seeking is unreliable on files without an
    index, which is exactly the files decord fails on."""

    def __init__(self, path: str):
        import cv2

        self.path = path
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise MediaError(path, "OpenCV cannot open it", "corrupt_media")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if self.total <= 0:  # no usable header count: count by decoding
            self.total = self._count()
        if self.fps <= 0 or self.total <= 0:
            raise MediaError(path, f"OpenCV sees {self.total} frames at {self.fps} fps", "corrupt_media")

    def _count(self) -> int:
        import cv2

        cap, n = cv2.VideoCapture(self.path), 0
        while cap.grab():
            n += 1
        cap.release()
        return n

    def _frames(self, wanted: set[int]) -> dict[int, np.ndarray]:
        import cv2

        cap, kept = cv2.VideoCapture(self.path), {}
        for i in range(max(wanted) + 1):
            if not cap.grab():
                break
            if i in wanted:
                ok, bgr = cap.retrieve()  # [H, W, 3] BGR
                if not ok:
                    break
                kept[i] = bgr
        cap.release()
        return kept

    def read(self, indices: list[int]) -> np.ndarray:
        import cv2

        kept = self._frames(set(indices))
        missing = sorted(set(indices) - set(kept))
        if missing:
            raise MediaError(
                self.path, f"header says {self.total} frames, frame {missing[0]} is not decodable", "corrupt_media"
            )
        return np.stack([cv2.cvtColor(kept[i], cv2.COLOR_BGR2RGB) for i in indices])  # [n, H, W, 3]


class FrameListReader:
    """Frames stored as image files. They carry no frame rate: they are taken to be sampled at the
    configured `fps` already, so all of them are used unless that breaks [min_frames, max_frames]."""

    def __init__(self, paths: list[str], fps: float):
        self.paths, self.fps, self.total = paths, fps, len(paths)

    def read(self, indices: list[int]) -> np.ndarray:
        images = [load_image(self.paths[i]) for i in indices]
        size = images[0].size  # frames of one video share a size; stragglers are resized to the first
        arrays = [np.asarray(im if im.size == size else im.resize(size)) for im in images]
        return np.stack(arrays)  # [n, H, W, 3]


def frame_paths(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise MediaError(folder, "folder holds no frame images", "empty_media")
    return [os.path.join(folder, n) for n in names]


def _sample(reader: Reader, budget: Budget, path: str) -> tuple[np.ndarray, FramePlan]:
    if reader.total <= 0 or reader.fps <= 0:
        raise MediaError(path, f"reports {reader.total} frames at {reader.fps} fps", "corrupt_media")
    try:
        plan = plan_frames(reader.total, reader.fps, budget)
    except ValueError as e:  # start/end outside the clip
        raise MediaError(path, str(e), "bad_column") from e
    frames = reader.read(plan.indices)  # [n, H, W, 3]
    if frames.ndim != 4 or frames.shape[0] != len(plan.indices) or frames.shape[3] != 3:
        raise MediaError(path, f"decoder returned shape {frames.shape} for {len(plan.indices)} frames", "corrupt_media")
    if frames.max() == 0:
        # a truncated file decodes to black frames on some decoders; a real all-black clip is no QA input
        raise MediaError(path, f"all {len(plan.indices)} sampled frames are black", "corrupt_media")
    return frames, plan


def header_frames(path: str) -> int:
    """Frame count the container header claims (0 when unknown), as FFmpeg reports it via OpenCV."""
    import cv2

    cap = cv2.VideoCapture(path)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return max(count, 0)


def _decode_file(path: str, budget: Budget) -> tuple[np.ndarray, FramePlan, float]:
    """decord first; any decord failure or implausible result is retried with OpenCV."""
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        raise MediaError(path, f"unsupported video type {os.path.splitext(path)[1]!r}", "unsupported_media")
    first_error = ""
    try:
        reader = DecordReader(path)
        claimed = header_frames(path)
        if reader.total < 0.9 * claimed - 1:
            # a truncated AVI opens in decord with fewer frames, which repeat the first: garbage
            raise MediaError(path, f"sees {reader.total} frames, the container header claims {claimed}", "corrupt_media")
        frames, plan = _sample(reader, budget, path)
        return frames, plan, reader.fps
    except ImportError:
        first_error = "decord not installed"
    except MediaError as e:
        if e.kind == "bad_column":
            raise
        first_error = f"decord: {e.reason}"
    except Exception as e:  # decord raises its own DECORDError and RuntimeErrors; all mean "try OpenCV"
        first_error = f"decord: {type(e).__name__}: {str(e)[:200]}"
    log.info("%s: %s; retrying with OpenCV", path, first_error)
    try:
        reader = OpenCVReader(path)
        frames, plan = _sample(reader, budget, path)
        return frames, plan, reader.fps
    except MediaError as e:
        if e.kind == "bad_column":
            raise
        raise MediaError(path, f"undecodable ({first_error}; OpenCV: {e.reason})", "corrupt_media") from e


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, 3, h, w] uint8 -> [T, 3, height, width] uint8, bicubic with antialias (qwen-vl-utils)."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    return tvF.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)


def decode_video(media: Media, vision: VisionConfig, grid: Grid = Grid()) -> Frames:
    """Sample and resize one video (`media.options` override `vision`) to multiples of the model's
    `grid`. Raises MediaError."""
    budget = resolve_budget(media.options, vision, grid)
    source = media.source
    if isinstance(source, list) or os.path.isdir(source):
        paths = source if isinstance(source, list) else frame_paths(source)
        if not paths:
            raise MediaError("<frame list>", "frame list is empty", "empty_media")
        for p in paths:
            check_file(p)
        reader = FrameListReader(paths, budget.fps)
        array, plan = _sample(reader, budget, paths[0])
        source_fps = budget.fps
    else:
        check_file(source)
        array, plan, source_fps = _decode_file(source, budget)
    frames = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)  # [T, 3, h, w] uint8
    try:
        height, width = frame_size(frames.shape[2], frames.shape[3], frames.shape[0], budget)
    except ValueError as e:  # aspect ratio beyond Qwen's 200:1
        raise MediaError(str(source), str(e), "unsupported_media") from e
    frames = resize_frames(frames, height, width)  # [T, 3, H, W] uint8
    return Frames(frames=frames.contiguous(), fps=plan.sampled_fps, source_fps=source_fps, duration=plan.duration,
                  indices=tuple(plan.indices), clip_frames=plan.clip_frames)
