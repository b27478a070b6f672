"""Completion -> (parsed answer, score), through `mmgrpo.answers`: the evaluator and the accuracy
reward read answers the same way, with the same numeric tolerance (`reward.numeric_tolerance`), so
a checkpoint's eval accuracy and its training reward agree. The parsed answer is what the report
shows, what majority voting counts, and what decides an "invalid format" (None)."""
from __future__ import annotations

from mmgrpo.answers import parse_answer, score_answer
from mmgrpo.processors.sample import Sample


def score_output(text: str, sample: Sample, numeric_tolerance: float) -> tuple[str | None, float]:
    """(parsed answer, score in [0, 1]) of one completion for `sample`. A sample without a
    reference answer cannot be scored: 0."""
    parsed = parse_answer(text, sample.problem_type, sample.options)
    if sample.answer is None:
        return parsed, 0.0
    return parsed, score_answer(text, sample.answer, sample.problem_type, sample.options, tol=numeric_tolerance)
