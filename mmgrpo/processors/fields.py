"""Normalising the answer, options, problem type and media options of one dataset row."""
from __future__ import annotations

import json
import re
from typing import Any

from mmgrpo.processors.sample import PROBLEM_TYPES, BadSampleError, MediaOptions

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LETTERED = re.compile(r"^\(?([A-Z])\)?[.):]\s*(.*)$", re.DOTALL)
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?[.):]?$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")

# MediaOptions fields and the column / content-item names that set them (qwen-vl-utils spells the
# clip bounds video_start / video_end)
OPTION_KEYS = {
    "fps": "fps", "nframes": "nframes", "min_frames": "min_frames", "max_frames": "max_frames",
    "min_pixels": "min_pixels", "max_pixels": "max_pixels", "total_pixels": "total_pixels",
    "start": "start", "end": "end", "video_start": "start", "video_end": "end",
}
_INT_OPTIONS = {"nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"}


def answer_text(value: Any) -> str | None:
    """The bare answer: `<answer>B</answer>` -> "B"; numbers and [start, end] lists as text."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return json.dumps([float(v) for v in value]) if all(_is_number(v) for v in value) else json.dumps(list(value))
    if not isinstance(value, str):
        return str(value)
    tagged = _ANSWER_TAG.search(value)
    text = (tagged.group(1) if tagged else value).strip()
    return answer_text(json.loads(text)) if _is_interval(text) else text  # "[1, 2]" -> "[1.0, 2.0]"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def choice_letter(answer: str, options: list[str]) -> str:
    """A multiple-choice answer as its letter: "B", "(B)", "B." or "B. blue" or "blue" -> "B"."""
    letters = {o[0]: o[3:] for o in options}
    only = _LETTER_ONLY.match(answer)
    if only and only.group(1) in letters:
        return only.group(1)
    lettered = _LETTERED.match(answer)
    if lettered and lettered.group(1) in letters:
        return lettered.group(1)
    by_text = [k for k, v in letters.items() if v.strip().lower() == answer.strip().lower()]
    return by_text[0] if len(by_text) == 1 else answer


def infer_problem_type(declared: Any, answer: str | None, options: list[str] | None, ref: str) -> str:
    """The `problem_type` column when given, else: options -> multiple_choice; a number ->
    numeric; a [start, end] pair -> temporal_iou; anything else -> exact."""
    if declared is not None:
        if declared not in PROBLEM_TYPES:
            raise BadSampleError(ref, f"problem_type {declared!r} is not one of {list(PROBLEM_TYPES)}", "bad_column")
        return declared
    if options:
        return "multiple_choice"
    if answer is not None and _NUMBER.match(answer.strip()):
        return "numeric"
    if answer is not None and _is_interval(answer):
        return "temporal_iou"
    return "exact"


def _is_interval(answer: str) -> bool:
    try:
        value = json.loads(answer)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)


def media_options(values: dict[str, Any], ref: str, base: MediaOptions | None = None) -> MediaOptions:
    """MediaOptions from the option keys present in `values` (a row or a content item), on top of
    `base` (the row's options, which a content item refines)."""
    fields = dict(vars(base)) if base is not None else dict(vars(MediaOptions()))
    for key, name in OPTION_KEYS.items():
        if key not in values or values[key] is None:
            continue
        value = values[key]
        if not _is_number(value) or value < 0:
            raise BadSampleError(ref, f"media option {key!r} must be a non-negative number, got {value!r}", "bad_column")
        if name in _INT_OPTIONS:
            if float(value) != int(value):
                raise BadSampleError(ref, f"media option {key!r} must be an integer, got {value!r}", "bad_column")
            value = int(value)
        else:
            value = float(value)
        fields[name] = value
    return MediaOptions(**fields)
