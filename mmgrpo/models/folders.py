"""Checkpoint folders on disk: their names and what a folder holds. The trainer (saving, resuming,
recovering an interrupted save) and export (`mmgrpo merge` given a run folder) find checkpoints
through these functions only.

    checkpoint-N                       a checkpoint (complete once the trainer's state file is in it)
    .checkpoint-N.tmp / .old / .deleting   hidden: a save or a prune under way
"""
from __future__ import annotations

import re
from pathlib import Path

_ENTRY_RE = re.compile(r"^(\.?)checkpoint-(\d+)(?:\.(tmp|old|deleting))?$")
_KIND_ORDER = {"": 0, "tmp": 1, "old": 2, "deleting": 3}  # recovery promotes a .tmp before an .old


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def checkpoint_entries(output_dir: str | Path) -> list[tuple[int, str, Path]]:
    """(step, kind, folder) of every checkpoint folder, by step; kind "" for checkpoint-N, else
    "tmp" | "old" | "deleting"."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _ENTRY_RE.match(p.name)
        if m and p.is_dir() and (m.group(1) == "") == (m.group(3) is None):
            found.append((int(m.group(2)), m.group(3) or "", p))
    return sorted(found, key=lambda e: (e[0], _KIND_ORDER[e[1]]))


def checkpoint_step(folder: Path) -> int | None:
    """N of a visible `checkpoint-N` folder, else None."""
    m = _ENTRY_RE.match(folder.name)
    return int(m.group(2)) if m and not m.group(1) and m.group(3) is None else None


def is_adapter_folder(path: str | Path) -> bool:
    """A PEFT adapter (else full weights)."""
    return (Path(path) / "adapter_config.json").is_file()


def holds_weights(folder: Path) -> bool:
    return is_adapter_folder(folder) or (folder / "config.json").is_file()


def has_processor_files(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() and any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")
    )
