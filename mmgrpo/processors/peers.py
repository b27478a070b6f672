"""Rows in the training formats of Video-R1 and EasyR1, read as they are, and the media placeholders
each peer adds when a prompt lacks them. Pure functions over a row's dict: `formats.py` turns their
result into a `Sample` the way it does for its own formats.

- videor1: Video-R1's training JSON (tulerfeng/Video-R1, src/r1-v/src/open_r1/grpo.py): `problem`,
  `data_type` ("image" / "video") and `path` of the one media item, `problem_type` spelled
  "multiple choice", "numerical", "OCR", "free-form", "regression", `options` (already lettered),
  `solution` ("<answer>B</answer>"), and `problem_id`, `process`, `data_source` (kept as columns).
  Video-R1 joins `path` ("./LLaVA-Video-178K/x.mp4") to its data folder: here it resolves
  against the dataset file's folder (or `data.media_root`), so the JSON sits where Video-R1 puts
  it. The question is rendered as the plain format renders it (the problem, then one option per
  line); Video-R1's instruction templates belong in `data.prompt_suffix`. The sample id is the
  file stem and row (`problem_id` repeats across Video-R1's sources), unless the row has `id`.
- easyr1: EasyR1's (hiyouga/EasyR1, verl/utils/dataset.py): the prompt text in `prompt_key`
  (default `problem`) with `<image>` / `<video>` tags where the media go, the reference in
  `answer_key` (`answer`), media lists in `image_key` / `video_key` (`images` / `videos`); the
  keys are `data.prompt_key` ... as in EasyR1's `data:` section. EasyR1's `image_dir` is
  `data.media_root`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mmgrpo.config import DataConfig

# Video-R1's problem_type spellings -> answers.PROBLEM_TYPES. Video-R1 scores OCR by word error
# rate and free-form by ROUGE (partial credit): free_text (ROUGE-L) is the nearest; regression
# by relative error: numeric (within reward.numeric_tolerance) is the nearest.
VIDEO_R1_TYPES = {"multiple choice": "multiple_choice", "numerical": "numeric", "OCR": "free_text",
                  "free-form": "free_text", "regression": "numeric"}
VIDEO_R1_COLUMNS = ("problem", "data_type", "path")


@dataclass(frozen=True)
class EasyR1Keys:
    """EasyR1's configurable column names (its `data.prompt_key` ...)."""

    prompt: str
    answer: str
    image: str
    video: str

    @classmethod
    def of(cls, data: DataConfig) -> EasyR1Keys:
        return cls(data.prompt_key, data.answer_key, data.image_key, data.video_key)


def is_videor1(row: dict) -> bool:
    return all(c in row for c in VIDEO_R1_COLUMNS)


def videor1_as_plain(row: dict) -> dict[str, Any] | str:
    """The row in the plain format (question, options, answer, image / video, problem_type), or why
    it cannot be read."""
    kind, declared = row["data_type"], row.get("problem_type")
    if kind not in ("image", "video"):
        return f"Video-R1 data_type must be 'image' or 'video', got {kind!r}"
    if declared is not None and declared not in VIDEO_R1_TYPES and declared not in VIDEO_R1_TYPES.values():
        return f"Video-R1 problem_type {declared!r} is not one of {list(VIDEO_R1_TYPES)}"
    own = ("problem", "data_type", "path", "solution", "problem_type", "options")
    plain = {k: v for k, v in row.items() if k not in own}  # id, per-row fps ..., Video-R1's extra columns
    plain.update(question=row["problem"], answer=row.get("solution"), **{kind: row["path"]})
    if row.get("options"):
        plain["options"] = row["options"]
    if declared is not None:
        plain["problem_type"] = VIDEO_R1_TYPES.get(declared, declared)
    return plain


def missing_tags(texts: list[str], counts: dict[str, int]) -> dict[str, int]:
    """ms-swift's rule (swift/template/base.py, `_add_default_tags`): per media kind, the entries
    the messages' texts (system included) have no `<image>` / `<video>` tag for. ms-swift prepends
    that many tags to the first non-system message."""
    text = "\n".join(texts)
    return {kind: n - len(re.findall(f"<{kind}>", text)) for kind, n in counts.items()
            if n > len(re.findall(f"<{kind}>", text))}


def with_tags(content: str, missing: dict[str, int]) -> str:
    return "".join(f"<{kind}>" * n for kind, n in missing.items()) + content


def inserted_note(missing: dict[str, int], how: str) -> str:
    """How check-data reports an insertion: 'inserted 1 image placeholder (as ms-swift does)'."""
    parts = [f"{n} {kind} placeholder{'s' if n > 1 else ''}" for kind, n in missing.items()]
    return f"inserted {' and '.join(parts)} ({how})"
