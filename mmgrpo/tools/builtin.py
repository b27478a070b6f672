"""Built-in tools: `crop` / `zoom` on an image (or a video frame) of the prompt, `frames` that decodes
a time window of the prompt's video again at a higher frame rate, and a safe `calculator`.

The point of the visual tools (DeepEyes §3, Mini-o3 §3, Pixel Reasoner's select_frames): the prompt
shows its media at the run's pixel and frame budget, where a small detail or a short event may be
invisible; a tool reads the *source* again, so the policy can look closer where it chooses.
Tool images are resized to `tools.max_pixels` by the tool-turn encoder (processors/toolturn.py).
"""
from __future__ import annotations

import ast
import dataclasses
import operator
from dataclasses import dataclass

from PIL import Image

from mmgrpo.config import ToolsConfig, VisionConfig
from mmgrpo.processors.budget import Grid
from mmgrpo.processors.image import load_image
from mmgrpo.processors.sample import MediaOptions, Sample
from mmgrpo.processors.video import decode_video
from mmgrpo.tools.base import Tool


@dataclass(frozen=True)
class ToolContext:
    """What the built-in tools can see of a trajectory: its sample's media (sources, not the
    budget-resized prompt frames) and the settings to decode them with."""

    sample: Sample
    vision: VisionConfig
    tools: ToolsConfig
    grid: Grid


def _media(ctx: ToolContext, index: int, kind: str | None):
    items = ctx.sample.media
    if not 0 <= index < len(items):
        raise ValueError(f"media index {index} out of range: the prompt has {len(items)} media item(s)")
    if kind is not None and items[index].kind != kind:
        raise ValueError(f"media {index} is a {items[index].kind}, not a {kind}")
    return items[index]


def _decode_window(ctx: ToolContext, index: int, start: float, end: float, fps: float) -> list[Image.Image]:
    media = _media(ctx, index, "video")
    if not end > start >= 0:
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    options = MediaOptions(fps=fps, min_frames=2, max_frames=ctx.tools.frames_max, max_pixels=ctx.tools.max_pixels,
                           start=start, end=end)
    frames = decode_video(dataclasses.replace(media, options=options), ctx.vision, ctx.grid).frames  # [T, 3, H, W]
    return [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]


def source_image(ctx: ToolContext, media: int, time: float | None) -> Image.Image:
    """Image `media` of the prompt at its source resolution, or the frame at `time` s of a video."""
    item = _media(ctx, media, None)
    if item.kind == "image":
        return load_image(item.source, item.data)
    if time is None:
        raise ValueError(f"media {media} is a video: give the frame's time in seconds")
    return _decode_window(ctx, media, float(time), float(time) + 0.5, 2.0)[0]


def crop(ctx: ToolContext, box: list, media: int = 0, relative: bool = False, time: float | None = None):
    """Crop box [x1, y1, x2, y2] of a prompt image (pixels of the source, or 0..1 if `relative`)."""
    image = source_image(ctx, int(media), time)
    if len(box) != 4:
        raise ValueError(f"box must be [x1, y1, x2, y2], got {box}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if relative:
        x1, x2, y1, y2 = x1 * image.width, x2 * image.width, y1 * image.height, y2 * image.height
    x1, x2 = max(0.0, min(x1, x2)), min(float(image.width), max(x1, x2))
    y1, y2 = max(0.0, min(y1, y2)), min(float(image.height), max(y1, y2))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ValueError(f"the box {box} is empty inside the {image.width}x{image.height} image")
    return image.crop((int(x1), int(y1), int(round(x2)), int(round(y2))))


def zoom(ctx: ToolContext, x: float, y: float, factor: float = 2.0, media: int = 0, time: float | None = None):
    """The window 1/factor of the image's size centred on (x, y), relative coordinates in 0..1."""
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    half = 0.5 / float(factor)
    cx, cy = min(max(float(x), half), 1 - half), min(max(float(y), half), 1 - half)
    return crop(ctx, [cx - half, cy - half, cx + half, cy + half], media, True, time)


def frames(ctx: ToolContext, start: float, end: float, media: int = 0):
    """Frames of the prompt's video between `start` and `end` seconds, at `tools.frames_fps`."""
    return _decode_window(ctx, int(media), float(start), float(end), ctx.tools.frames_fps)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
        ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:  # 10**10**10 would never return
            raise ValueError("exponent too large (at most 64)")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def calculator(ctx: ToolContext, expression: str) -> str:
    """The value of an arithmetic expression: numbers, + - * / // % ** and parentheses (no names,
    no calls: parsed with `ast`, never `eval`)."""
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    value = _evaluate(ast.parse(expression, mode="eval").body)
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required}


_MEDIA = {"type": "integer", "description": "which image or video of the prompt (0 = the first)"}
_TIME = {"type": "number", "description": "for a video: the frame's time in seconds"}
BUILTIN_TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("crop", "Crop a region of an image of the prompt and look at it at a higher resolution.",
         _obj({"box": {"type": "array", "items": {"type": "number"}, "description": "[x1, y1, x2, y2]"},
               "relative": {"type": "boolean", "description": "box in 0..1 of the width / height"},
               "media": _MEDIA, "time": _TIME}, ["box"]), crop),
    Tool("zoom", "Zoom into an image of the prompt around a point (relative coordinates 0..1).",
         _obj({"x": {"type": "number"}, "y": {"type": "number"}, "factor": {"type": "number"},
               "media": _MEDIA, "time": _TIME}, ["x", "y"]), zoom),
    Tool("frames", "Look again at a time window of the prompt's video, at a higher frame rate.",
         _obj({"start": {"type": "number"}, "end": {"type": "number"}, "media": _MEDIA}, ["start", "end"]), frames),
    Tool("calculator", "Evaluate an arithmetic expression.",
         _obj({"expression": {"type": "string"}}, ["expression"]), calculator),
)}


