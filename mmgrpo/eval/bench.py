"""Evaluation data: every format the processors read, plus the usual video-QA benchmark layout.

Benchmark rows (MVBench, Video-MME, TempCompass style) are rewritten into the processors' `plain`
row and then built by `processors.formats` like any other row, so a benchmark question reaches the
model exactly as the same question in a training file would: the question, then one "A. text"
option per line (`processors.fields.render_options`), then the configured prompt suffix.

Benchmark columns understood (first present wins):
- question: `question`, `Question`, `query`
- options:  `options`, `candidates`, `choices` - a list of texts, a list already lettered
            ("A. red", "(B) blue"), a {"A": text} dict, or, when absent, "A. ..." lines at the
            end of the question (TempCompass)
- answer:   `answer`, `Answer`, `gt`, `ground_truth` - a letter ("B", "(B)", "B. blue"), a 0-based
            index (an integer, or `answer_idx` / `answer_index`), or the option text
- media:    `video`, `video_path`, `video_file`, `image`, `image_path`, or `videoID` / `video_id`
            naming `<media root>/<id>.<ext>` (Video-MME); `start` / `end` (seconds) cut a clip
- id:       `id`, `question_id`, `qid`, `uid`; absent: `<file stem>-<row>`
- labels:   task `task_type` / `task` / `dim` / `question_type` (absent: the file stem - MVBench
            keeps one task per file); category `category` / `domain`; duration `duration` /
            `video_duration` (seconds or a label like Video-MME's "short")
A JSON file may also be a {task: [rows]} mapping. Media paths are `processors.formats`': without
`media_root` relative paths resolve against the data file's folder and any path is followed; with
it, relative paths (and Video-MME ids) resolve against it, in every row format, and a path that
leaves it (`../`, absolute, `~`, a symlink out) is an error record of kind `media_outside_root`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgrpo.processors.fields import normalize_options
from mmgrpo.processors.formats import _Row, read_rows, row_to_sample
from mmgrpo.processors.reading import MediaRoot
from mmgrpo.processors.peers import is_videor1
from mmgrpo.processors.reading import read_json
from mmgrpo.processors.sample import BadSampleError, Sample
from mmgrpo.processors.video import VIDEO_EXTENSIONS

QUESTION_KEYS = ("question", "Question", "query")
OPTION_KEYS = ("options", "candidates", "choices")
ANSWER_KEYS = ("answer", "Answer", "gt", "ground_truth")
INDEX_KEYS = ("answer_idx", "answer_index")
VIDEO_KEYS = ("video", "video_path", "video_file")
IMAGE_KEYS = ("image", "image_path")
VIDEO_ID_KEYS = ("videoID", "video_id")
ID_KEYS = ("id", "question_id", "qid", "uid")
TASK_KEYS = ("task_type", "task", "dim", "question_type")
CATEGORY_KEYS = ("category", "domain")
DURATION_KEYS = ("duration", "video_duration")

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\)?[.):]\s+\S")


@dataclass
class LoadError:
    """A row that could not become a `Sample`; evaluated as an error record, never dropped."""

    id: str
    task: str
    source: str
    index: int
    error: str
    kind: str  # BadSampleError.kind: missing_media, bad_column, ...


@dataclass
class Labels:
    task: str
    category: str | None
    duration: float | str | None


def _first(data: dict, keys: tuple[str, ...]) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


def _split_question(question: str) -> tuple[str, list[str] | None]:
    """TempCompass-style questions carry their options as trailing "A. ..." lines."""
    lines = question.rstrip().split("\n")
    start = len(lines)
    while start > 0 and _OPTION_LINE.match(lines[start - 1]):
        start -= 1
    options = [ln.strip() for ln in lines[start:]]
    if len(options) < 2 or [o.lstrip("(")[0] for o in options] != [chr(ord("A") + i) for i in range(len(options))]:
        return question, None
    return "\n".join(lines[:start]), options


def _options(data: dict, question: str) -> tuple[str, Any]:
    raw = _first(data, OPTION_KEYS)
    if isinstance(raw, dict):  # {"A": "red", "B": "blue"}
        raw = [f"{k}. {v}" for k, v in sorted(raw.items())]
    elif isinstance(raw, list):
        raw = [str(o) for o in raw]  # counting benchmarks list numbers
    if raw is None:
        question, raw = _split_question(question)
    return question, raw


def _answer(data: dict, options: list[str] | None) -> Any:
    """Letter for multiple choice (an index becomes its letter); anything else unchanged."""
    answer = _first(data, ANSWER_KEYS)
    index = _first(data, INDEX_KEYS)
    if index is None and isinstance(answer, int) and not isinstance(answer, bool) and options:
        index = answer
    if index is None or not options:
        return answer
    if not isinstance(index, int) or not 0 <= index < len(options):
        raise ValueError(f"answer index {index!r} is outside the {len(options)} options")
    return chr(ord("A") + index)


def _video_by_id(video_id: str, root: str) -> str:
    """`<root>/<id>.<ext>` for the first extension that exists; `.mp4` when none does, so the
    missing file is reported under its most likely name."""
    for ext in VIDEO_EXTENSIONS:
        path = os.path.join(root, f"{video_id}{ext}")
        if os.path.exists(path):
            return path
    return os.path.join(root, f"{video_id}.mp4")


def to_plain_row(data: dict, base_dir: str, media_root: str | None = None, ref: str = "?") -> dict:
    """A benchmark row as a processors `plain` row; every original column is kept. Media paths
    stay as written (the processors resolve and confine them); only a video id becomes a path."""
    row = dict(data)
    question = _first(data, QUESTION_KEYS)
    if not isinstance(question, str):
        return row  # let the processors report the missing question
    question, raw_options = _options(data, question)
    row["question"] = question
    if raw_options is not None:
        options = normalize_options(raw_options, ref)
        row["options"] = options
        row["answer"] = _answer(data, options)
    elif _first(data, ANSWER_KEYS) is not None:
        row["answer"] = _first(data, ANSWER_KEYS)
    if _first(data, ID_KEYS) is not None:
        row["id"] = str(_first(data, ID_KEYS))
    video, image, video_id = _first(data, VIDEO_KEYS), _first(data, IMAGE_KEYS), _first(data, VIDEO_ID_KEYS)
    if video is None and image is None and video_id is not None:
        video = _video_by_id(str(video_id), media_root or base_dir)
    for key, value in (("video", video), ("image", image)):
        if value is not None:
            row[key] = value
    return row


def read_bench_rows(path: str) -> tuple[list[Any], str, str]:
    """`formats.read_rows`, plus JSON files that map task -> list of rows."""
    p = Path(path)
    if p.suffix.lower() == ".json" and p.is_file():
        data = read_json(p)
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            rows = [{"task": task, **r} if isinstance(r, dict) and not _first(r, TASK_KEYS) else r
                    for task, part in data.items() for r in part]
            return rows, str(p), str(p.parent.resolve())
    return read_rows(path)


def labels(sample: Sample) -> Labels:
    c = sample.columns
    task = _first(c, TASK_KEYS)
    category = _first(c, CATEGORY_KEYS)
    return Labels(
        task=str(task) if task is not None else (Path(sample.source).stem or "all"),
        category=str(category) if category is not None else None,
        duration=_first(c, DURATION_KEYS),
    )


def _load_row(row: _Row, fmt: str, system_prompt: str | None, prompt_suffix: str) -> Sample:
    own_format = isinstance(row.data, dict) and ("prompt" in row.data or "messages" in row.data or is_videor1(row.data))
    if isinstance(row.data, dict) and not own_format and fmt in ("auto", "plain"):
        root = row.root.path if row.root is not None else None
        try:
            row = _Row(to_plain_row(row.data, row.base_dir, root, row.ref), row.index, row.source, row.base_dir, row.root)
        except ValueError as e:  # an answer index outside the options, options of the wrong type
            raise row.bad(str(e)) from e
    return row_to_sample(row, fmt, system_prompt, prompt_suffix)


def load_eval_data(
    paths: list[str],
    fmt: str = "auto",
    media_root: str | None = None,
    system_prompt: str | None = None,
    prompt_suffix: str = "",
    strict: bool = False,
) -> list[Sample | LoadError]:
    """Every row of every file, in order: a `Sample`, or a `LoadError` saying why not (raised
    instead with `strict`). Ids are made unique across files (see `unique_ids`)."""
    items: list[Sample | LoadError] = []
    root = MediaRoot.of(media_root)  # None: rows resolve against their own folder, unconfined
    for path in paths:
        rows, source, base_dir = read_bench_rows(path)
        for index, data in enumerate(rows):
            row = _Row(data, index, source, base_dir, root)
            try:
                items.append(_load_row(row, fmt, system_prompt, prompt_suffix))
            except BadSampleError as e:
                if strict:
                    raise
                items.append(_load_error(row, e))
    return unique_ids(items)


def _load_error(row: _Row, e: BadSampleError) -> LoadError:
    data = row.data if isinstance(row.data, dict) else {}
    ident = _first(data, ID_KEYS)
    task = _first(data, TASK_KEYS)
    return LoadError(
        id=str(ident) if ident is not None else row.id,
        task=str(task) if task is not None else Path(row.source).stem,
        source=row.source,
        index=row.index,
        error=str(e),
        kind=e.kind,
    )


def unique_ids(items: list[Sample | LoadError]) -> list[Sample | LoadError]:
    """Resuming skips done ids, so ids must be unique: a repeated id becomes `<file stem>/<id>`
    (then `#2`, `#3`, ...). Deterministic, so a resumed run assigns the same ids."""
    seen: set[str] = set()
    for item in items:
        new = item.id
        if new in seen:
            new = f"{Path(item.source).stem}/{item.id}"
        n = 2
        while new in seen:
            new, n = f"{Path(item.source).stem}/{item.id}#{n}", n + 1
        item.id = new
        seen.add(new)
    return items
