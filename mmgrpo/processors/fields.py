"""Normalising the answer, options, problem type and media options of one dataset row."""
from __future__ import annotations

import json
import re
from typing import Any

from mmgrpo.answers import PROBLEM_TYPES, infer_problem_type, is_number
from mmgrpo.processors.sample import BadSampleError, MediaOptions

_LETTERED = re.compile(r"^\(?([A-Z])\)?[.):]\s*(.*)$", re.DOTALL)

# MediaOptions fields and the column / content-item names that set them (qwen-vl-utils spells the
# clip bounds video_start / video_end)
OPTION_KEYS = {
    "fps": "fps", "nframes": "nframes", "min_frames": "min_frames", "max_frames": "max_frames",
    "min_pixels": "min_pixels", "max_pixels": "max_pixels", "total_pixels": "total_pixels",
    "start": "start", "end": "end", "video_start": "start", "video_end": "end",
}
_INT_OPTIONS = {"nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"}


def normalize_options(raw: Any, ref: str) -> list[str] | None:
    """Options in one form: `["A. red", "B. blue", ...]`, letters in order.

    Accepts a list of bare texts (lettered A, B, ... here), a list already lettered ("A. red",
    "(B) blue", "C: green"), or a JSON string of either. This is also how the multiple-choice
    prompt shows them: the question, then one option per line."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise BadSampleError(ref, f"column 'options' is a string that is not a JSON list: {raw[:80]!r}", "bad_column")
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(o, str) for o in raw):
        raise BadSampleError(ref, f"column 'options' must be a non-empty list of strings, got {raw!r}"[:300], "bad_column")
    matches = [_LETTERED.match(o.strip()) for o in raw]
    if all(matches):
        return [f"{m.group(1)}. {m.group(2).strip()}" for m in matches]
    return [f"{chr(ord('A') + i)}. {o.strip()}" for i, o in enumerate(raw)]


def render_options(question: str, options: list[str]) -> str:
    """The multiple-choice question text: the question, then one "A. text" option per line."""
    return "\n".join([question.rstrip(), *options])


def problem_type(declared: Any, answer: str | None, options: list[str] | None, ref: str) -> str:
    """The `problem_type` column when given (one of answers.PROBLEM_TYPES), else inferred from the
    answer and options (answers.infer_problem_type)."""
    if declared is not None:
        if declared not in PROBLEM_TYPES:
            raise BadSampleError(ref, f"problem_type {declared!r} is not one of {list(PROBLEM_TYPES)}", "bad_column")
        return declared
    return infer_problem_type(answer, options)


def media_options(values: dict[str, Any], ref: str, base: MediaOptions | None = None) -> MediaOptions:
    """MediaOptions from the option keys present in `values` (a row or a content item), on top of
    `base` (the row's options, which a content item refines)."""
    fields = dict(vars(base)) if base is not None else dict(vars(MediaOptions()))
    for key, name in OPTION_KEYS.items():
        if key not in values or values[key] is None:
            continue
        value = values[key]
        if not is_number(value) or value < 0:
            raise BadSampleError(ref, f"media option {key!r} must be a non-negative number, got {value!r}", "bad_column")
        if name in _INT_OPTIONS:
            if float(value) != int(value):
                raise BadSampleError(ref, f"media option {key!r} must be an integer, got {value!r}", "bad_column")
            value = int(value)
        else:
            value = float(value)
        fields[name] = value
    return MediaOptions(**fields)
