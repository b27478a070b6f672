"""docs/config.md is generated from the config dataclasses and must match them."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from mmgrpo.config import TrainConfig
from mmgrpo.config.doc import field_comments, render, sections

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_config_doc_is_up_to_date():
    assert DOC.read_text() == render(), "docs/config.md is out of date: run python scripts/config_doc.py"


def test_every_key_is_documented():
    text = DOC.read_text()
    hints = typing.get_type_hints(TrainConfig)
    for name in sections(TrainConfig):
        assert f"### `{name}`" in text
        sub = typing.get_type_hints(hints[name])
        for f in dataclasses.fields(hints[name]):
            nested = dataclasses.is_dataclass(sub[f.name])
            assert (f"### `{name}.{f.name}`" if nested else f"| `{name}.{f.name}` |") in text
    assert "| `init_from` |" in text and "| `loss.beta` | float | `0.0` | >= 0 | KL coefficient" in text


def test_field_comments_read_the_source():
    comments = field_comments(TrainConfig)
    assert comments["prompts_per_step"] == "groups per optimizer step (before grad accumulation)"
    assert comments["init_from"].startswith("start weights")  # a comment above the field, over lines
