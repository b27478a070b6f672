"""The eval output folder: predictions appended per batch, and the settings a resume must match.

A killed run loses at most the batch in flight: records are appended and flushed to disk after every
batch, and a resumed run skips the ids already there. A line cut short by the kill is dropped (and
the file rewritten without it) so the next append starts on a clean line.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmgrpo.eval.metrics import PredictionRecord

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
REPORT = "report.md"
CHART = "task_accuracy.png"
RUN = "run.json"


class ResumeMismatchError(ValueError):
    """The output folder holds predictions made with different settings."""


@dataclass
class RunInfo:
    """What produced the predictions in a folder. The fields in `MUST_MATCH` change the predictions,
    so resuming with other values would mix two evaluations in one file."""

    model: str
    adapter: str | None
    data: list[str]
    num_samples: int
    max_new_tokens: int
    temperature: float
    name: str = ""  # label used by --compare (default: the folder name)
    extra: dict = field(default_factory=dict)

    MUST_MATCH = ("model", "adapter", "num_samples", "max_new_tokens", "temperature")

    def check_resume(self, earlier: "RunInfo") -> None:
        diffs = [
            f"{k}: {getattr(earlier, k)!r} before, {getattr(self, k)!r} now"
            for k in self.MUST_MATCH
            if getattr(earlier, k) != getattr(self, k)
        ]
        if diffs:
            raise ResumeMismatchError(
                "the output folder holds predictions made with other settings ("
                + "; ".join(diffs)
                + "); use a new --out, or delete predictions.jsonl to start over"
            )


def read_run_info(out_dir: Path) -> RunInfo | None:
    path = Path(out_dir) / RUN
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(RunInfo)}
    return RunInfo(**{k: v for k, v in d.items() if k in names})


def write_run_info(out_dir: Path, info: RunInfo) -> None:
    (Path(out_dir) / RUN).write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")


class PredictionStore:
    """predictions.jsonl in `out_dir`: read what is done, append new records durably."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / PREDICTIONS

    def load(self) -> list[PredictionRecord]:
        """Records already written, one per id (the first wins). Cut-off lines are dropped."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        records: dict[str, PredictionRecord] = {}
        clean = True
        for line in text.splitlines():
            try:
                rec = PredictionRecord.from_json(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                clean = False  # the tail of a killed write
                continue
            records.setdefault(rec.id, rec)
        if not clean or (text and not text.endswith("\n")):
            self._rewrite(list(records.values()))
        return list(records.values())

    def append(self, records: list[PredictionRecord]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for r in records:
                f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self, records: list[PredictionRecord]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for r in records:
                f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)
