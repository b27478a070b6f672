"""Dataset files -> raw rows, with text-encoding faults turned into errors that name where they are.

- JSONL is read as bytes and decoded line by line: a line that is not UTF-8 (or not JSON) becomes
  an `UnreadableRow`, which `formats` reports as that one bad row (its line and byte named), and
  the other rows still load. Splitting bytes also keeps U+2028 and friends inside their line.
- A JSON file is one document: an invalid byte makes the whole file unusable, and the error names
  the file, the byte offset and the line.
- `MediaRoot` (`data.media_root`): the folder media paths resolve against and may not leave.
- JSON can also hold strings that UTF-8 cannot (a lone surrogate written `"\\ud800"`). Tokenizers
  reject them with a TypeError mid-run, so `unencodable` finds them when a row is converted.
"""
from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class UnreadableRow:
    """A JSONL line that could not become a row; `formats.row_to_sample` raises it as a bad row."""

    reason: str
    kind: str  # BadSampleError.kind: bad_encoding (not UTF-8) or bad_column (not JSON)


def read_jsonl(path: Path) -> list[Any]:
    """One row per non-blank line: the parsed JSON value, or an `UnreadableRow`."""
    rows: list[Any] = []
    offset = 0  # of the current line in the file, for the error message
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        start = offset
        offset += len(line)
        if number == 1 and line.startswith(codecs.BOM_UTF8):  # editors on Windows write one
            line, start = line[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
        if line.strip():
            rows.append(_jsonl_row(line.rstrip(b"\r\n"), number, start))
    return rows


def _jsonl_row(line: bytes, number: int, start: int) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return UnreadableRow(
            f"line {number} is not valid UTF-8: byte 0x{line[e.start]:02x} at position {e.start} of the line "
            f"(file offset {start + e.start}; {e.reason})",
            "bad_encoding",
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return UnreadableRow(f"line {number} is not valid JSON: {e}", "bad_column")


def read_json(path: Path) -> Any:
    """The JSON document in `path`; ValueError naming the file and position when it is not UTF-8
    or not JSON."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        line = data.count(b"\n", 0, at) + 1
        raise ValueError(f"{path}: not valid UTF-8: byte 0x{data[at]:02x} at offset {at} (line {line}; {e.reason}); "
                         "a JSON file is one document, so none of its rows can be read") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def unencodable(row: dict) -> str | None:
    """Where in `row` a string cannot be written as UTF-8, e.g. "column 'prompt'[0]['content']:
    '\\ud800' at character 3"; None when every string (keys included) can."""
    for key, value in row.items():
        found = _find(key, f"column {key!r} (its name)") or _find(value, f"column {key!r}")
        if found:
            return found
    return None


def _find(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        if value.isascii():  # the common case, and ASCII is always encodable
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"{where}: {value[e.start]!r} at character {e.start}"  # repr escapes the surrogate
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find(k, f"{where} (a key)") or _find(v, f"{where}[{k!r}]")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find(v, f"{where}[{i}]")
            if found:
                return found
    return None


def read_rows(source: Any, split: str | None = None) -> tuple[list[Any], str, str]:
    """(rows, source name, folder that relative media paths resolve against)."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return _raw_rows(source), f"<dataset {source.info.dataset_name or 'in memory'}>", os.getcwd()
    path = Path(source)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            names = list(loaded)
            if split is None and len(names) != 1:
                raise ValueError(f"{path} holds splits {names}; pass split=")
            loaded = loaded[split or names[0]]
        return _raw_rows(loaded), str(path), str(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    base = str(path.parent.resolve())
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path), str(path), base
    if suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a JSON dataset must be a list of rows, got {type(rows).__name__}")
        return rows, str(path), base
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), str(path), base
    raise ValueError(f"{path}: unsupported dataset file type {suffix!r} (jsonl, json, parquet, or a datasets folder)")


def _raw_rows(ds: Any) -> list[dict]:
    """Rows as stored: an `Image` column stays {"bytes", "path"} instead of being decoded into PIL
    images for the whole dataset up front (each image is decoded when its sample is encoded)."""
    return ds.with_format("arrow")[0 : len(ds)].to_pylist()


@dataclass(frozen=True)
class MediaRoot:
    """`DataConfig.media_root`: the folder relative media paths resolve against and no media path
    may leave."""

    path: str  # absolute, as the user named it: relative media paths are joined to it
    real: str  # symlinks resolved: a media file's realpath must lie under it

    @classmethod
    def of(cls, folder: str | None) -> MediaRoot | None:
        """None for None; a relative folder is taken from the working directory."""
        if folder is None:
            return None
        path = os.path.abspath(os.path.expanduser(folder))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"data.media_root: {folder!r} is not a folder")
        return cls(path, os.path.realpath(path))

    def contains(self, real_path: str) -> bool:
        return os.path.commonpath([self.real, real_path]) == self.real
