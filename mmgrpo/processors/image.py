"""Images: open with PIL, apply EXIF orientation, convert every mode to RGB, resize to the budget."""
from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from qwen_vl_utils.vision_process import to_rgb

from mmgrpo.processors.budget import Budget, frame_size
from mmgrpo.processors.sample import MediaError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def check_file(path: str) -> None:
    """Missing and empty files fail here, before any decoder sees them."""
    if not os.path.exists(path):
        raise MediaError(path, "file not found", "missing_media")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(path, "file is empty (0 bytes)", "empty_media")


def load_image(path: str, data: bytes | None = None) -> Image.Image:
    """The image at `path` (or encoded in `data`, which `path` then only names) as RGB, upright
    (EXIF orientation applied).

    Transparent images (RGBA, LA, palette with transparency) are composited on white, as
    qwen-vl-utils does; CMYK, greyscale and palette images are converted; 16-bit greyscale is
    scaled to 8 bits rather than clipped."""
    if data is None:
        check_file(path)
        if os.path.isdir(path):
            raise MediaError(path, "is a folder, not an image file", "unsupported_media")
    elif not data:
        raise MediaError(path, "embedded image is empty (0 bytes)", "empty_media")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as opened:
            opened.load()  # truncated files fail here, not later in a worker
            image = ImageOps.exif_transpose(opened)
            return _to_rgb(image)
    except UnidentifiedImageError as e:
        raise MediaError(path, f"not a readable image ({e})", "corrupt_media") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(path, f"cannot decode image ({e})", "corrupt_media") from e


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        wide = np.asarray(image, dtype=np.uint16)  # [H, W]
        image = Image.fromarray((wide >> 8).astype(np.uint8))
    if image.mode in ("I", "F"):  # 32-bit int / float: PIL's convert clips at 255 (a 16-bit TIFF turns white)
        image = Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float64), image.mode))  # [H, W]
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    return to_rgb(image)  # RGBA on white, everything else through PIL's convert


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """[H, W] -> [H, W] uint8, scaled from the range the values were stored in: 0-1 floats, 8-bit or
    16-bit integers (the usual contents of mode F / I files), else the image's own maximum."""
    top = float(values.max(initial=0.0))
    for scale in ((1.0,) if mode == "F" else ()) + (255.0, 65535.0):
        if top <= scale:
            top = scale
            break
    return np.clip(np.round(values / max(top, 1e-12) * 255.0), 0, 255).astype(np.uint8)


def image_frames(image: Image.Image, budget: Budget) -> torch.Tensor:
    """[1, 3, H, W] uint8, resized with Qwen's smart-resize rule (bicubic, as qwen-vl-utils)."""
    height, width = frame_size(image.height, image.width, None, budget)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W]
