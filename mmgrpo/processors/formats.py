"""Dataset rows -> `Sample`s. Five formats, one result.

Files: JSONL, JSON (a list of rows), parquet, a `datasets.Dataset`, or a folder written by
`Dataset.save_to_disk`. Formats (`fmt="auto"` picks per row by its columns):

- trl:   `prompt` (chat messages, or a plain string) + `image`/`images` and `video`/`videos`
         columns; content items `{"type": "image"}` / `{"type": "video"}` take the next entry of
         those columns, `{"type": "video", "video": path, "fps": 1}` items carry their own.
- swift: `messages` with `<image>` / `<video>` tags in the text + `images` / `videos` columns; an
         assistant message is the answer, else the `solution` column (`<answer>B</answer>` ok).
- plain: `question`, `answer`, `video` or `image` (or `videos` / `images`), optional `options`,
         `problem_type`, `id`.
- videor1, easyr1: Video-R1's and EasyR1's training data, as those projects write it (peers.py).

Missing media placeholders are added the way each peer does it, and the sample's `notes` say so
(check-data reports them): a TRL prompt whose first user message is a string gets a placeholder
for every media entry before its text (TRL's prepare_multimodal_messages); ms-swift and EasyR1
text with fewer `<image>` / `<video>` tags than entries gets the missing tags in front of the first
non-system message (ms-swift's _add_default_tags).

All give the same `Sample` for the same question: user content = the media placeholders
in order, then text items. Plain rows build their text as the question, then the options one per
line ("A. text", see `fields.normalize_options`); trl and swift text is taken as written (tags
split out, surrounding whitespace stripped), so write options there the same way for equal
samples. `source` and `columns` always differ between formats: `columns` keeps every column of the
row (answer / solution included) for reward functions. Per-sample media options (`fps`, `nframes`,
`min_pixels`, `max_pixels`, `total_pixels`, `start`, `end`, ...) come from columns and, refining
those, from content items; `budget.resolve_budget` caps them at `vision.sample_max_*`.
`DataConfig.system_prompt` is added when a row has no system message of its own; `prompt_suffix`
goes on a new line after the last user text.

Media are file paths or, for images, the embedded bytes of a datasets `Image` column (bytes need no
confinement). Without `media_root` (the default, as in TRL / ms-swift) relative paths resolve
against the dataset file's folder (a datasets folder is its own base, an in-memory Dataset uses the
cwd) and any path is followed. With `media_root`, relative paths resolve against it and a path
whose real location (symlinks followed) leaves it - `../`, absolute, `~`, a link out, a frame of a
frame list or folder - is a bad sample of kind `media_outside_root`.

Text faults are per-row errors too (`reading`): a JSONL line that is not UTF-8, or a string that
UTF-8 cannot hold (a lone surrogate), is a bad row of kind `bad_encoding` naming the line / column.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmgrpo.config import DataConfig
from mmgrpo.answers import reference_answer, reference_letter
from mmgrpo.processors.fields import media_options, normalize_options, problem_type, render_options
from mmgrpo.processors.image import IMAGE_EXTENSIONS, check_file
from mmgrpo.processors.peers import EasyR1Keys, inserted_note, is_videor1, missing_tags, videor1_as_plain, with_tags
from mmgrpo.processors.reading import MediaRoot, UnreadableRow, read_rows, unencodable  # noqa: F401 (re-exported)
from mmgrpo.processors.sample import BadSampleError, Media, MediaError, MediaOptions, Sample
from mmgrpo.processors.toolformat import tool_messages
from mmgrpo.processors.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

_TAG = re.compile(r"(<image>|<video>)")
_UNSUPPORTED_COLUMNS = ("audio", "audios")


@dataclass
class LoadResult:
    samples: list[Sample]
    skipped: list[BadSampleError] = field(default_factory=list)  # with on_bad_sample="skip"


@dataclass
class _Row:
    """One row being converted: where it came from, how errors name it."""

    data: dict[str, Any]
    index: int
    source: str
    base_dir: str
    root: MediaRoot | None = None  # set: media paths resolve against it and must stay inside
    keys: EasyR1Keys = field(default_factory=lambda: EasyR1Keys.of(DataConfig()))
    notes: list[str] = field(default_factory=list)  # what loading added to the row (Sample.notes)

    @property
    def id(self) -> str:
        value = self.data.get("id")  # optional column; absent -> file stem and row
        return str(value) if value is not None else f"{Path(self.source).stem or 'row'}-{self.index}"

    @property
    def ref(self) -> str:
        return Sample(id=self.id, prompt=[], media=[], answer=None, problem_type="exact", index=self.index, source=self.source).ref

    def bad(self, reason: str, kind: str = "bad_column") -> BadSampleError:
        return BadSampleError(self.ref, reason, kind, self.id)


# -- media columns ------------------------------------------------------------------------------


def _entries(row: _Row, *names: str) -> list[Any]:
    """Media entries of the first present column: a plural column is a list of items (each a path
    or a list of frame paths), a singular one a single item."""
    for name in names:
        value = row.data.get(name)
        if value is None:
            continue
        if name.endswith("s"):
            if not isinstance(value, (list, tuple)):
                raise row.bad(f"column {name!r} must be a list, got {type(value).__name__}")
            return list(value)
        return [value]
    return []


def _media(row: _Row, value: Any, kind: str, options: MediaOptions) -> Media:
    if kind == "image" and isinstance(value, dict) and value.get("bytes") is not None:
        # datasets' Image feature with the image embedded: `path` is only its original name
        name = f"<embedded image {value.get('path') or ''} of row {row.index}>"
        return Media(kind, name, options, data=bytes(value["bytes"]))
    return Media(kind, _resolve(row, value, kind), options)


def _resolve(row: _Row, value: Any, kind: str) -> str | list[str]:
    if isinstance(value, dict) and isinstance(value.get("path"), str):  # datasets' {"bytes", "path"}
        value = value["path"]
    if kind == "video" and isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return [_resolve(row, v, "frame") for v in value]
    if not isinstance(value, str) or not value:
        raise row.bad(
            f"{kind} entry must be a file path or embedded image bytes, got {type(value).__name__}",
            "unsupported_media" if value is not None else "bad_column",
        )
    if value.startswith(("http://", "https://")):
        raise row.bad(f"remote {kind} {value!r} is not supported: download it first", "unsupported_media")
    path = value[len("file://"):] if value.startswith("file://") else value
    base = row.root.path if row.root is not None else row.base_dir
    path = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    if row.root is not None:
        _confine(row, row.root, value, path, kind)  # before any existence check: nothing outside is probed
    _check_media_path(row, path, kind)
    if row.root is not None and kind == "video" and os.path.isdir(path):
        _confine_folder(row, row.root, value, path)
    return path


def _confine(row: _Row, root: MediaRoot, given: str, path: str, kind: str) -> None:
    real = os.path.realpath(path)
    if not root.contains(real):
        raise row.bad(f"{kind} path {given!r} resolves to {real}, outside media_root {root.path}", "media_outside_root")


def _confine_folder(row: _Row, root: MediaRoot, given: str, folder: str) -> None:
    """The frames a folder holds (`video.frame_paths`) stay inside too: the folder is inside, so
    only a symlinked entry can lead out."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                real = os.path.realpath(entry.path)
                if not root.contains(real):
                    raise row.bad(f"frame {entry.name!r} of video folder {given!r} links to {real}, "
                                  f"outside media_root {root.path}", "media_outside_root")


def _check_media_path(row: _Row, path: str, kind: str) -> None:
    try:
        check_file(path)
    except MediaError as e:
        raise e.for_sample(row.ref, row.id) from e
    is_video_file = path.lower().endswith(VIDEO_EXTENSIONS)
    if kind in ("image", "frame") and (is_video_file or os.path.isdir(path)):
        raise row.bad(f"{path}: an {kind} must be an image file", "unsupported_media")
    if kind == "video" and not os.path.isdir(path) and not is_video_file:
        raise row.bad(f"{path}: unsupported video type {Path(path).suffix!r}", "unsupported_media")


class _Pool:
    """The entries of a media column, handed out to placeholders in order."""

    def __init__(self, row: _Row, kind: str, entries: list[Any]):
        self.row, self.kind, self.entries, self.used = row, kind, entries, 0

    def take(self) -> Any:
        if self.used >= len(self.entries):
            raise self.row.bad(f"prompt has more {self.kind} placeholders than the {self.kind} column has entries ({len(self.entries)})")
        self.used += 1
        return self.entries[self.used - 1]

    def check_all_used(self) -> None:
        if self.used != len(self.entries):
            raise self.row.bad(f"{len(self.entries)} {self.kind} entries but {self.used} {self.kind} placeholders in the prompt")


# -- the three formats ----------------------------------------------------------------------------


def _messages(row: _Row, column: str) -> list[dict]:
    messages = row.data[column]
    if isinstance(messages, str) and column == "prompt":
        return [{"role": "user", "content": messages}]
    if isinstance(messages, list):  # multi-turn tool conversations (TRL tool_calls, ms-swift tool_call turns)
        messages = tool_messages(messages)
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise row.bad(f"column {column!r} must be a list of {{'role', 'content'}} messages")
    return messages


def _split_answer(messages: list[dict]) -> tuple[list[dict], Any]:
    """A trailing assistant message is the reference answer, not part of the prompt."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], _text_of(messages[-1]["content"])
    return messages, None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(item.get("text", "") for item in content if isinstance(item, dict))


def _with_placeholders(row: _Row, messages: list[dict], pools: dict[str, _Pool]) -> list[dict]:
    """TRL's rule (trl/data_utils.py, prepare_multimodal_messages): the first user message with
    string content gets a placeholder for every media entry of the row, before its text; when
    another message places media with content items, nothing is inserted."""
    if any(isinstance(m["content"], list) and any(isinstance(c, dict) and c.get("type") in ("image", "video")
                                                   for c in m["content"]) for m in messages):
        return messages
    first = next((i for i, m in enumerate(messages) if m["role"] == "user" and isinstance(m["content"], str)), None)
    counts = {k: len(p.entries) for k, p in pools.items() if p.entries}
    if first is None or not counts:
        return messages
    items = [{"type": k} for k in ("image", "video") for _ in pools[k].entries]
    row.notes.append(inserted_note(counts, "as TRL does"))
    content = [*items, {"type": "text", "text": messages[first]["content"]}]
    return [*messages[:first], {"role": "user", "content": content}, *messages[first + 1:]]


def _trl(row: _Row, options: MediaOptions) -> tuple[list[dict], list[Media], Any]:
    messages, answer = _split_answer(_messages(row, "prompt"))
    pools = {"image": _Pool(row, "image", _entries(row, "images", "image")),
             "video": _Pool(row, "video", _entries(row, "videos", "video"))}
    messages = _with_placeholders(row, messages, pools)
    out, media = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str) and message["role"] != "user":
            out.append({"role": message["role"], "content": content})
            continue
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        items = []
        for item in content:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                items.append({"type": "text", "text": str(item.get("text", ""))})
            elif kind in ("image", "video"):
                value = item[kind] if item.get(kind) is not None else pools[kind].take()
                media.append(_media(row, value, kind, media_options(item, row.ref, options)))
                items.append({"type": kind})
            else:
                raise row.bad(f"unsupported content item type {kind!r}", "unsupported_media")
        out.append({"role": message["role"], "content": items})
    for pool in pools.values():
        pool.check_all_used()
    return out, media, _first(row.data.get("answer"), row.data.get("solution"), answer)


def _swift(row: _Row, options: MediaOptions) -> tuple[list[dict], list[Media], Any]:
    messages, answer = _split_answer(_messages(row, "messages"))
    prompt, media = _tagged(row, messages, _entries(row, "images"), _entries(row, "videos"), options, "as ms-swift does")
    return prompt, media, _first(answer, row.data.get("solution"), row.data.get("answer"))


def _easyr1(row: _Row, options: MediaOptions) -> tuple[list[dict], list[Media], Any]:
    k = row.keys
    text = row.data[k.prompt]
    if not isinstance(text, str) or not text.strip():
        raise row.bad(f"column {k.prompt!r} (data.prompt_key) must be a non-empty string, got {text!r}"[:200])
    images, videos = _listed(row, k.image), _listed(row, k.video)
    prompt, media = _tagged(row, [{"role": "user", "content": text}], images, videos, options, "as ms-swift does")
    return prompt, media, row.data.get(k.answer)


def _listed(row: _Row, key: str) -> list:
    """An EasyR1 media column: always a list of items, whatever its name ("" = no such column)."""
    value = row.data.get(key) if key else None
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise row.bad(f"column {key!r} must be a list of media, got {type(value).__name__}")
    return list(value)


def _tagged(row: _Row, messages: list[dict], images: list, videos: list, options: MediaOptions,
            how: str) -> tuple[list[dict], list[Media]]:
    """Messages with `<image>` / `<video>` tags in string content -> content items, each tag taking
    the next entry of its list. Entries without a tag get one first (ms-swift's rule, peers.py)."""
    pools = {"image": _Pool(row, "image", images), "video": _Pool(row, "video", videos)}
    if not all(isinstance(m["content"], str) for m in messages):
        raise row.bad("messages must have string content with <image>/<video> tags")
    missing = missing_tags([m["content"] for m in messages], {k: len(p.entries) for k, p in pools.items()})
    if missing:
        first = next(i for i, m in enumerate(messages) if m["role"] != "system")
        messages = [*messages[:first], {**messages[first], "content": with_tags(messages[first]["content"], missing)},
                    *messages[first + 1:]]
        row.notes.append(inserted_note(missing, how))
    out, media = [], []
    for message in messages:
        if message["role"] != "user":
            out.append({"role": message["role"], "content": message["content"]})
            continue
        items = []
        for piece in _TAG.split(message["content"]):
            if piece in ("<image>", "<video>"):
                kind = piece[1:-1]
                media.append(_media(row, pools[kind].take(), kind, options))
                items.append({"type": kind})
            elif piece.strip():
                items.append({"type": "text", "text": piece.strip()})
        out.append({"role": "user", "content": items})
    for pool in pools.values():
        pool.check_all_used()
    return out, media


def _plain(row: _Row, options: MediaOptions) -> tuple[list[dict], list[Media], Any]:
    question = row.data["question"]
    if not isinstance(question, str) or not question.strip():
        raise row.bad(f"column 'question' must be a non-empty string, got {question!r}"[:200])
    media = [_media(row, v, "image", options) for v in _entries(row, "images", "image")]
    media += [_media(row, v, "video", options) for v in _entries(row, "videos", "video")]
    opts = normalize_options(row.data.get("options"), row.ref)
    text = render_options(question, opts) if opts else question.strip()
    content = [{"type": m.kind} for m in media] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}], media, row.data.get("answer")


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _videor1(row: _Row, options: MediaOptions) -> tuple[list[dict], list[Media], Any]:
    return _plain(row, options)  # row_to_sample has put the row in the plain format (peers.videor1_as_plain)


FORMATS: dict[str, Callable[[_Row, MediaOptions], tuple[list[dict], list[Media], Any]]] = {
    "trl": _trl, "swift": _swift, "plain": _plain, "videor1": _videor1, "easyr1": _easyr1,
}


def detect_format(row: dict, keys: EasyR1Keys) -> str | None:
    if "prompt" in row and keys.prompt != "prompt":
        return "trl"
    if "messages" in row:
        return "swift"
    if "question" in row:
        return "plain"
    if is_videor1(row):
        return "videor1"
    if keys.prompt in row:
        return "easyr1"
    return None


def _required(kind: str, keys: EasyR1Keys) -> str:
    return {"trl": "prompt", "swift": "messages", "plain": "question", "videor1": "problem", "easyr1": keys.prompt}[kind]


# -- rows -> samples ------------------------------------------------------------------------------


def _finish_prompt(messages: list[dict], system_prompt: str | None, prompt_suffix: str) -> list[dict]:
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if prompt_suffix:
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        content = list(messages[last]["content"])
        texts = [i for i, c in enumerate(content) if c["type"] == "text"]
        if texts:
            content[texts[-1]] = {"type": "text", "text": content[texts[-1]]["text"] + "\n" + prompt_suffix}
        else:
            content.append({"type": "text", "text": prompt_suffix})
        messages = [*messages[:last], {"role": "user", "content": content}, *messages[last + 1:]]
    return messages


def row_to_sample(row: _Row, fmt: str, system_prompt: str | None, prompt_suffix: str) -> Sample:
    if isinstance(row.data, UnreadableRow):
        raise BadSampleError(f"(row {row.index} in {row.source})", row.data.reason, row.data.kind)
    if not isinstance(row.data, dict):
        raise BadSampleError(f"(row {row.index} in {row.source})", f"a row must be an object, got {type(row.data).__name__}", "bad_column")
    where = unencodable(row.data)
    if where is not None:
        raise row.bad(f"{where} is a lone surrogate (a JSON \\u escape that is not half of a pair), not text: "
                      "no tokenizer can encode it", "bad_encoding")
    kind = detect_format(row.data, row.keys) if fmt == "auto" else fmt
    if kind is None:
        raise row.bad(f"cannot tell the format from columns {sorted(row.data)} (need prompt (TRL), messages "
                      f"(ms-swift), question (plain), problem + data_type + path (Video-R1) or {row.keys.prompt} "
                      "(EasyR1, data.prompt_key))")
    required = _required(kind, row.keys)
    if required not in row.data:
        raise row.bad(f"{kind} format needs column {required!r}; columns are {sorted(row.data)}")
    if any(row.data.get(c) for c in _UNSUPPORTED_COLUMNS):
        raise row.bad("audio inputs are not supported", "unsupported_media")
    columns = dict(row.data)  # as the file has them, for reward functions
    if kind == "videor1":
        plain = videor1_as_plain(row.data)
        if isinstance(plain, str):
            raise row.bad(plain)
        row = dataclasses.replace(row, data=plain)
    messages, media, raw_answer = FORMATS[kind](row, media_options(row.data, row.ref))
    if not any(m["role"] == "user" for m in messages):
        raise row.bad("the prompt has no user message")
    answer = reference_answer(raw_answer)
    options = normalize_options(row.data.get("options"), row.ref)
    if options and answer is not None:
        answer = reference_letter(answer, options)
    return Sample(
        id=row.id,
        prompt=_finish_prompt(messages, system_prompt, prompt_suffix),
        media=media,
        answer=answer,
        problem_type=problem_type(row.data.get("problem_type"), answer, options, row.ref),
        options=options,
        columns=columns,
        index=row.index,
        source=row.source,
        notes=tuple(row.notes),
    )


def load_samples(
    source: Any,
    fmt: str = "auto",
    on_bad_sample: str = "raise",
    system_prompt: str | None = None,
    prompt_suffix: str = "",
    split: str | None = None,
    media_root: str | None = None,
    keys: EasyR1Keys | None = None,
) -> LoadResult:
    """Every row of `source` as a `Sample`. A bad row raises BadSampleError, or with
    `on_bad_sample="skip"` is logged and returned in `skipped`. `media_root`: see the module
    docstring (None: paths are followed wherever they lead). `keys`: EasyR1's column names (None:
    DataConfig's defaults, those of EasyR1's example config)."""
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    root = MediaRoot.of(media_root)
    keys = keys or EasyR1Keys.of(DataConfig())
    rows, name, base_dir = read_rows(source, split)
    result = LoadResult(samples=[])
    for index, data in enumerate(rows):
        row = _Row(data, index, name, base_dir, root, keys)
        try:
            result.samples.append(row_to_sample(row, fmt, system_prompt, prompt_suffix))
        except BadSampleError as e:
            if e.sample_id is None and isinstance(data, dict):
                e.sample_id = row.id
            if on_bad_sample != "skip":
                raise
            log.warning("skipping %s", e)
            result.skipped.append(e)
    if result.skipped:
        log.warning("%s: skipped %d of %d rows", name, len(result.skipped), len(rows))
    return result


def load_samples_from_config(data_cfg: DataConfig, split: str = "train") -> LoadResult:
    """All files of `data_cfg.train` (or `.eval`), concatenated in order."""
    files = {"train": data_cfg.train, "eval": data_cfg.eval}[split]
    total = LoadResult(samples=[])
    for path in files:
        part = load_samples(path, data_cfg.format, data_cfg.on_bad_sample, data_cfg.system_prompt, data_cfg.prompt_suffix,
                            media_root=data_cfg.media_root, keys=EasyR1Keys.of(data_cfg))
        total.samples.extend(part.samples)
        total.skipped.extend(part.skipped)
    return total
