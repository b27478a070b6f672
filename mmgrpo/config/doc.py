"""`docs/config.md`, the reference of every config key, generated from the dataclasses in schema.py:
type, default, allowed range and the field's own comment. `python scripts/config_doc.py` rewrites
it; tests/test_config_doc.py fails when it is out of date. Imports nothing heavy (train --help)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Literal

from mmgrpo.config import SFTConfig, TrainConfig

_FIELD = re.compile(r"^(\w+): [^=]+?(?:=.*)?$")
_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def sections(cls: type) -> list[str]:
    """Names of the nested sections of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source: the `#` lines just above it and the one after it."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
            continue
        code, _, inline = text.partition("  # ")
        match = _FIELD.match(code)
        if match and line.startswith("    ") and not line.startswith("     "):
            out[match.group(1)] = " ".join([*pending, inline.strip()]).strip()
        pending = []
    return out


def type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) if a is not type(None) else "null" for a in args)
    if origin is tuple and args[-1:] == (Ellipsis,):
        return f"list of {type_text(args[0])}"
    if origin is tuple:
        return f"[{', '.join(type_text(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _value(v: Any) -> str:
    if isinstance(v, tuple):
        v = list(v)
    text = "null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v)
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return f"`{text[:60]}{'...' if len(text) > 60 else ''}`"


def _bounds(f: dataclasses.Field) -> str:
    bounds = f.metadata.get("bounds", {})
    return " and ".join(f"{_BOUND_TEXT[k]} {v:g}" for k, v in bounds.items())


def section_table(cls: type, instance: Any, prefix: str) -> list[str]:
    """One markdown table: the plain fields of `cls` (nested sections get their own table)."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    rows = ["| key | type | default | range | what |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        key = f"{prefix}{f.name}"
        rows.append(f"| `{key}` | {type_text(hints[f.name])} | {_value(getattr(instance, f.name))} | "
                    f"{_bounds(f)} | {comments.get(f.name, '').replace('|', '/')} |")
    return rows


def config_tables(cls: type, title: str) -> list[str]:
    instance = cls()
    hints = typing.get_type_hints(cls)
    lines = [f"## {title}", "", "Top level:", "", *section_table(cls, instance, "")]
    todo = [(name, hints[name], getattr(instance, name)) for name in sections(cls)]
    while todo:
        path, sub, value = todo.pop(0)
        doc = inspect.getdoc(sub)
        own = doc if doc and not doc.startswith(f"{sub.__name__}(") else ""
        lines += ["", f"### `{path}`", "", *([own.replace("\n", " "), ""] if own else []),
                  *section_table(sub, value, f"{path}.")]
        sub_hints = typing.get_type_hints(sub)
        todo += [(f"{path}.{n}", sub_hints[n], getattr(value, n)) for n in sections(sub)]
    return lines


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every key of `mmgrpo train` and `mmgrpo sft` configs: set it in the YAML file (sections as",
        "nested mappings) or on the command line as `section.key=value`. Values are checked at load;",
        "an unknown key, a wrong type or a value out of range fails naming the key. Generated from",
        "`mmgrpo/config/schema.py` by `python scripts/config_doc.py` (do not edit by hand: `tests/test_config_doc.py`",
        "fails when this file is out of date).",
        "",
        *config_tables(TrainConfig, "`mmgrpo train` (TrainConfig)"),
        "",
        "`mmgrpo sft` also reads a training config: it takes the sections it shares with it (`model`, `lora`,",
        "`vision`, `data`, `seed`, `report_to`) and writes to the training run's `output_dir` + `-sft`.",
        "",
        *config_tables(SFTConfig, "`mmgrpo sft` (SFTConfig)"),
    ]
    return "\n".join(lines) + "\n"
