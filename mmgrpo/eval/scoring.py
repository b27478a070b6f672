"""Completion -> (parsed answer, score), through `mmgrpo.answers`: the evaluator and the accuracy
reward read answers the same way, so a checkpoint's eval accuracy and its training reward agree.

The parsed answer is what the report shows, what majority voting counts, and what decides an
"invalid format" (None): it is the value `score_answer` compares, in a canonical spelling so that
equal answers vote together ("B", "(B)" and "answer: B" are all "B"; "3.0" and "3" are "3").
"""
from __future__ import annotations

import json

from mmgrpo.answers import _choice, _interval, answer_text, is_hedge, normalize_text, parse_number, score_answer
from mmgrpo.processors.sample import Sample


def parse_answer(text: str, problem_type: str, options: list[str] | None = None) -> str | None:
    """The answer a completion gives, canonical, or None when it gives none (or hedges)."""
    said = answer_text(text)
    if not said or is_hedge(said):
        return None
    if problem_type == "multiple_choice":
        # the letter score_answer compares: "(B)", "B.", "answer: B", <answer>B</answer>, or the option text
        return _choice(said, options)
    if problem_type == "numeric":
        value = parse_number(said)  # as score_answer reads it: tag already stripped
        return None if value is None else f"{value:g}"
    if problem_type == "temporal_iou":
        interval = _interval(said)
        return None if interval is None else json.dumps([float(v) for v in interval])
    if problem_type == "exact":
        return normalize_text(said) or None
    return said  # free_text: the answer text itself


def score_output(text: str, sample: Sample) -> tuple[str | None, float]:
    """(parsed answer, score in [0, 1]) of one completion for `sample`. A sample without a
    reference answer cannot be scored: 0."""
    parsed = parse_answer(text, sample.problem_type, sample.options)
    if sample.answer is None:
        return parsed, 0.0
    return parsed, score_answer(text, sample.answer, sample.problem_type, sample.options)
