"""Prediction records and the metrics computed from them. Pure: no model, no files.

`compute_metrics(records)` is the only place metrics come from, both at the end of `mmgrpo eval`
and when a resumed run merges old and new predictions, so `metrics.json` can always be rebuilt
from `predictions.jsonl` alone.

Conventions (documented in the report too):
- every record counts, errors included: a sample that could not be evaluated (missing video, bad
  row) scores 0, so a broken benchmark copy cannot inflate accuracy. `accuracy_valid` leaves
  errors out for comparison.
- `score` is in [0, 1]; a prediction is `correct` when score >= 0.5. For multiple choice, numeric
  and exact answers the score is 0 or 1; for temporal IoU it is the IoU (correct = R@0.5) and for
  free text the similarity, so `mean_score` is then mIoU / mean similarity.
- latency per sample = batch wall time / batch size, so the latencies of a run sum to its
  generation time and `samples_per_s` = evaluated samples / that sum.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CORRECT_THRESHOLD = 0.5

# Video-MME's buckets (short < 2 min, medium 4-15 min, long 30-60 min), closed so that every
# length falls somewhere: < 2 min, < 15 min, longer.
DURATION_BUCKETS = ((120.0, "short"), (900.0, "medium"), (float("inf"), "long"))


@dataclass
class PredictionRecord:
    """One line of predictions.jsonl. With K samples per prompt the lists have K entries; the final
    `answer` is then the majority vote of the valid parses."""

    id: str
    task: str
    problem_type: str
    reference: str | None
    raw_outputs: list[str] = field(default_factory=list)  # [K] decoded completions
    parsed_answers: list[str | None] = field(default_factory=list)  # [K] None = no parsable answer
    scores: list[float] = field(default_factory=list)  # [K] in [0, 1]
    output_tokens: list[int] = field(default_factory=list)  # [K] generated tokens, EOS excluded
    answer: str | None = None  # final answer (the single parse, or the majority vote)
    score: float = 0.0  # score of the final answer
    correct: bool = False  # score >= CORRECT_THRESHOLD
    latency_s: float = 0.0  # batch wall time / batch size
    category: str | None = None
    duration: float | str | None = None  # video length in seconds, or a benchmark's own label
    source: str = ""
    error: str | None = None  # why the sample could not be evaluated
    error_kind: str | None = None  # missing_media, corrupt_media, bad_column, ...

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "PredictionRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class GroupStats:
    n: int = 0
    correct: int = 0
    errors: int = 0
    score_sum: float = 0.0
    accuracy: float = 0.0
    mean_score: float = 0.0

    def add(self, r: PredictionRecord) -> None:
        self.n += 1
        self.correct += int(r.correct)
        self.errors += int(r.error is not None)
        self.score_sum += r.score

    def finish(self) -> "GroupStats":
        self.accuracy = self.correct / self.n if self.n else 0.0
        self.mean_score = self.score_sum / self.n if self.n else 0.0
        return self


@dataclass
class SamplingStats:
    """Only when K > 1 completions were sampled per prompt."""

    k: int
    pass_at_k: float  # any of the K outputs correct
    mean_at_k: float  # mean correctness over all K outputs (unbiased pass@1 estimate)
    majority: float  # majority-vote answer correct (same as `accuracy`)


@dataclass
class EvalMetrics:
    n: int  # samples, errors included
    n_evaluated: int
    n_errors: int
    errors_by_kind: dict[str, int]
    accuracy: float  # correct / n (errors count as wrong)
    accuracy_valid: float  # correct / n_evaluated
    mean_score: float
    invalid_format_rate: float  # generated outputs without a parsable answer / all generated outputs
    mean_output_tokens: float
    samples_per_s: float
    generation_s: float  # summed latencies = generation wall time
    per_task: dict[str, GroupStats]
    per_category: dict[str, GroupStats]
    per_problem_type: dict[str, GroupStats]
    per_duration: dict[str, GroupStats]  # empty when no sample has a known duration
    sampling: SamplingStats | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalMetrics":
        groups = {k: {name: GroupStats(**g) for name, g in d[k].items()} for k in GROUP_FIELDS}
        sampling = SamplingStats(**d["sampling"]) if d.get("sampling") else None
        return cls(**{**d, **groups, "sampling": sampling})

    def flat(self) -> dict[str, float]:
        """Scalar view for loggers: `accuracy`, `task/<name>`, ..."""
        out = {
            "accuracy": self.accuracy,
            "accuracy_valid": self.accuracy_valid,
            "mean_score": self.mean_score,
            "error_rate": self.n_errors / self.n if self.n else 0.0,
            "invalid_format_rate": self.invalid_format_rate,
            "mean_output_tokens": self.mean_output_tokens,
            "samples_per_s": self.samples_per_s,
        }
        out.update({f"task/{k}": g.accuracy for k, g in self.per_task.items()})
        out.update({f"duration/{k}": g.accuracy for k, g in self.per_duration.items()})
        if self.sampling is not None:
            out[f"pass@{self.sampling.k}"] = self.sampling.pass_at_k
            out[f"mean@{self.sampling.k}"] = self.sampling.mean_at_k
        return out


GROUP_FIELDS = ("per_task", "per_category", "per_problem_type", "per_duration")


def duration_bucket(duration: float | str | None) -> str | None:
    """Seconds -> short / medium / long; a label the benchmark gives (Video-MME: "short") is kept."""
    if duration is None or duration == "":
        return None
    if isinstance(duration, str):
        try:
            duration = float(duration)
        except ValueError:
            return duration.strip().lower()
    return next(name for limit, name in DURATION_BUCKETS if duration < limit)


def majority_vote(parsed: list[str | None], scores: list[float]) -> tuple[str | None, float]:
    """Most frequent valid parse (ties: the one seen first) and the score of its first occurrence.
    With no valid parse the first output's score stands (free-text scorers may still credit it)."""
    valid = [p for p in parsed if p is not None]
    if not valid:
        return None, scores[0] if scores else 0.0
    counts = Counter(valid)
    best = max(counts.values())
    winner = next(p for p in valid if counts[p] == best)
    return winner, scores[parsed.index(winner)]


def _grouped(records: list[PredictionRecord], key) -> dict[str, GroupStats]:
    groups: dict[str, GroupStats] = {}
    for r in records:
        name = key(r)
        if name is not None:
            groups.setdefault(str(name), GroupStats()).add(r)
    return {name: groups[name].finish() for name in sorted(groups)}


def _sampling(records: list[PredictionRecord]) -> SamplingStats | None:
    k = max((len(r.scores) for r in records), default=0)
    if k <= 1:
        return None
    correct = [[s >= CORRECT_THRESHOLD for s in r.scores] for r in records]
    n = len(records)
    return SamplingStats(
        k=k,
        pass_at_k=sum(any(c) for c in correct) / n,
        mean_at_k=sum(sum(c) / len(c) for c in correct if c) / n,
        majority=sum(r.correct for r in records) / n,
    )


def compute_metrics(records: list[PredictionRecord]) -> EvalMetrics:
    n = len(records)
    ok = [r for r in records if r.error is None]
    n_ok = len(ok)
    outputs = [(p, t) for r in ok for p, t in zip(r.parsed_answers, r.output_tokens)]
    generation_s = sum(r.latency_s for r in ok)
    return EvalMetrics(
        n=n,
        n_evaluated=n_ok,
        n_errors=n - n_ok,
        errors_by_kind=dict(sorted(Counter(r.error_kind or "error" for r in records if r.error).items())),
        accuracy=sum(r.correct for r in records) / n if n else 0.0,
        accuracy_valid=sum(r.correct for r in ok) / n_ok if n_ok else 0.0,
        mean_score=sum(r.score for r in records) / n if n else 0.0,
        invalid_format_rate=sum(p is None for p, _ in outputs) / len(outputs) if outputs else 0.0,
        mean_output_tokens=sum(t for _, t in outputs) / len(outputs) if outputs else 0.0,
        samples_per_s=n_ok / generation_s if generation_s > 0 else 0.0,
        generation_s=generation_s,
        per_task=_grouped(records, lambda r: r.task),
        per_category=_grouped(records, lambda r: r.category),
        per_problem_type=_grouped(records, lambda r: r.problem_type),
        per_duration=_grouped(records, lambda r: duration_bucket(r.duration)),
        sampling=_sampling(records),
    )
