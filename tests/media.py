"""Synthetic media for tests: videos (mp4 / avi via OpenCV), images (PNG / JPEG, EXIF rotation,
any PIL mode), frame folders, and broken files (corrupt, truncated, empty).

    write_video(tmp_path / "a.mp4", solid_frames(8, 56, 84, (255, 0, 0)), fps=4)
    write_image(tmp_path / "a.jpg", array, exif_orientation=6)
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}


def solid_frames(t: int, h: int, w: int, color: tuple[int, int, int]) -> np.ndarray:
    """[T, H, W, 3] uint8 RGB frames of one colour."""
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (t, h, w, 3)).copy()


def counting_frames(t: int, h: int, w: int) -> np.ndarray:
    """[T, H, W, 3] uint8: frame i has a white bar whose width encodes i, on a grey background,
    so tests can tell frames apart after lossy encoding."""
    frames = np.full((t, h, w, 3), 64, dtype=np.uint8)
    for i in range(t):
        frames[i, :, : max(1, (i + 1) * w // (t + 1))] = 255
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: float, fourcc: str | None = None) -> Path:
    """Write [T, H, W, 3] uint8 RGB frames. fourcc defaults by extension: mp4 'mp4v', avi 'MJPG'."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    code = fourcc or FOURCC[path.suffix.lower()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with fourcc {code}")
    for frame in frames:
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_image(
    path: str | Path, array: np.ndarray, exif_orientation: int | None = None, mode: str | None = None
) -> Path:
    """Save an [H, W, 3] uint8 RGB array (PNG / JPEG by extension), converted to `mode` ("L",
    "RGBA", "P", "CMYK", "LA", "I;16") and tagged with an EXIF orientation (1-8) when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":  # adaptive palette: exact for few colours (the default web palette dithers)
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode is not None:
        image = image.convert(mode)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation  # Orientation tag
        kwargs["exif"] = exif.tobytes()
    image.save(path, **kwargs)
    return path


def write_rgba_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray) -> Path:
    """PNG with an alpha channel: rgb [H, W, 3] uint8, alpha [H, W] uint8."""
    path = Path(path)
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    return path


def write_frame_folder(folder: str | Path, frames: np.ndarray, ext: str = ".png") -> Path:
    """One image per frame, named so that sorting gives the order (00000.png, 00001.png, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}{ext}")
    return folder


def write_empty(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_corrupt(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a media extension: no decoder can open it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def truncate(path: str | Path, keep: float = 0.5, out: str | Path | None = None) -> Path:
    """A copy of `path` (or `path` itself) cut to the first `keep` fraction of its bytes."""
    path = Path(path)
    data = path.read_bytes()
    target = Path(out) if out is not None else path
    target.write_bytes(data[: max(1, int(len(data) * keep))])
    return target


def file_size(path: str | Path) -> int:
    return os.path.getsize(path)
