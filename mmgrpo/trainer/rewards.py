"""Reward functions (TRL convention) and the runner that turns them into a [N, R] tensor.

Convention shared with TRL (ALGORITHMS.md §6): `fn(completions, **columns) -> list[float | None]`,
one entry per completion; dataset columns arrive as keyword lists of the same length; None means
"not applicable to this sample" (left out of that sample's baseline, see advantages.py). A
function should accept `**kwargs`: the runner passes every column and the global extras.
Completions are strings; TRL's conversational form `[{"role": "assistant", "content": ...}]` is
accepted too.
"""
from __future__ import annotations

import importlib.util
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from mmgrpo.answers import PROBLEM_TYPES, infer_problem_type, score_answer

RewardFn = Callable[..., list]


def completion_text(completion: Any) -> str:
    """A completion as text: a string as is, a TRL conversational completion as its assistant text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion or []:
        if isinstance(message, dict) and message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        parts.append(str(content or ""))
    return "".join(parts)


def _column(values: list | None, n: int) -> list:
    """A per-completion column, or n Nones when the dataset does not have it."""
    return [None] * n if values is None else list(values)


def accuracy(completions: list, answer: list | None = None, problem_type: list | None = None,
             options: list | None = None, numeric_tolerance: float = 1e-2, **kwargs: Any) -> list[float | None]:
    """Whole-answer accuracy by problem type (answers.score_answer). Columns: `answer` (ms-swift's
    `solution` is read when `answer` is absent), `problem_type` (inferred when absent: options ->
    multiple_choice, ... as the dataset loaders do: answers.infer_problem_type), `options`. No
    reference -> None."""
    n = len(completions)
    answers = _column(answer if answer is not None else kwargs.get("solution"), n)
    types, opts = _column(problem_type, n), _column(options, n)
    out: list[float | None] = []
    for comp, ref, ptype, opt in zip(completions, answers, types, opts):
        if ref is None:
            out.append(None)
            continue
        ptype = ptype or infer_problem_type(str(ref), opt)
        if ptype not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem_type {ptype!r}; known: {list(PROBLEM_TYPES)}")
        out.append(score_answer(completion_text(comp), str(ref), ptype, options=opt or None, tol=numeric_tolerance))
    return out


# the whole completion: optional <think>...</think>, then exactly one non-empty <answer>...</answer>
_FORMAT = re.compile(r"\s*(?:<think>(?:(?!</?think>|</?answer>).)*</think>\s*)?"
                     r"<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*", re.DOTALL)


def format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    """1.0 when the whole completion is `[<think>...</think>] <answer>...</answer>` with a non-empty
    answer and no stray or nested tags (a <think> after the answer, two answers... score 0)."""
    out: list[float | None] = []
    for comp in completions:
        m = _FORMAT.fullmatch(completion_text(comp))
        out.append(float(bool(m and m.group(1).strip())))
    return out


def overlong(completions: list, completion_lengths: list | None = None, max_completion_length: int | None = None,
             overlong_buffer: int = 64, **kwargs: Any) -> list[float | None]:
    """DAPO §3.4 soft overlong punishment, with L = completion length, Lmax = budget, C = buffer:
    0 if L <= Lmax - C; ((Lmax - C) - L) / C inside the buffer; -1 beyond Lmax.
    Needs the `completion_lengths` column (tokens) and the `max_completion_length` extra."""
    if completion_lengths is None or max_completion_length is None:
        raise TypeError("overlong needs completion_lengths (column) and max_completion_length (extra)")
    if not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(f"overlong_buffer must be in (0, max_completion_length], got {overlong_buffer}")
    start = max_completion_length - overlong_buffer
    out: list[float | None] = []
    for length in completion_lengths:
        if length <= start:
            out.append(0.0)
        elif length <= max_completion_length:
            out.append((start - length) / overlong_buffer)
        else:
            out.append(-1.0)
    return out


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "format": format_reward,
    "overlong": overlong,
}


def load_reward(name_or_spec: str | RewardFn) -> RewardFn:
    """A built-in name (`REWARDS`), `"path/to/file.py:function"`, or a callable (returned as is)."""
    if callable(name_or_spec):
        return name_or_spec
    spec = str(name_or_spec)
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown reward {spec!r}: not a built-in {sorted(REWARDS)} nor 'file.py:function'")
    path_str, func_name = spec.rsplit(":", 1)
    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"reward {spec!r}: file {path} not found")
    module_name = f"mmgrpo_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"reward {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {path} has no callable {func_name!r}")
    return fn


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; names the function and the sample."""

    def __init__(self, function: str, sample_id: str | None, message: str):
        where = f" on sample {sample_id!r}" if sample_id is not None else ""
        super().__init__(f"reward function {function!r}{where}: {message}")
        self.function, self.sample_id = function, sample_id


@dataclass
class RewardResult:
    values: Tensor  # [N, R] float32, NaN where a function returned None
    errors: int  # (function, sample) pairs that failed and were scored 0 (on_error="zero")
    names: list[str]  # [R] function names, for logging


def _number(value: Any) -> float | None:
    """float for a finite real number (bool, int, float, numpy / 0-d tensor), NaN for None, else None."""
    if value is None:
        return math.nan
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


class RewardRunner:
    """Calls every reward function on a batch of completions and checks what they return.

    A function that raises is retried one completion at a time to find the culprit sample; the
    failure then raises `RewardError` (on_error="raise") or scores 0 and is counted (on_error="zero").
    NaN, inf and non-numbers are failures of that sample too; a wrong number of values is a broken
    contract and always raises.

    `columns` are per-completion lists (dataset columns, `completion_lengths`, ...), sliced when a
    function is retried per sample; an `extra` keyword holding a list of length N is treated as
    such a column; other `extra` keywords are passed unchanged to every call
    (`max_completion_length`, `overlong_buffer`, `numeric_tolerance` for the built-ins).
    """

    def __init__(self, functions: Sequence[str | RewardFn], weights: Sequence[float],
                 on_error: Literal["raise", "zero"] = "raise"):
        if len(functions) != len(weights):
            raise ValueError(f"{len(weights)} reward weights for {len(functions)} reward functions")
        if on_error not in ("raise", "zero"):
            raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
        self.functions = [load_reward(f) for f in functions]
        builtin = {id(fn): name for name, fn in REWARDS.items()}
        self.names = [
            f if isinstance(f, str) else builtin.get(id(f), getattr(f, "__name__", repr(f))) for f in functions
        ]
        self.weights = torch.tensor([float(w) for w in weights])  # [R]
        self.on_error = on_error

    def _fail(self, name: str, sample_id: str, message: str) -> float:
        if self.on_error == "raise":
            raise RewardError(name, sample_id, message)
        return 0.0

    def _call(self, fn: RewardFn, name: str, completions: list, columns: dict, ids: list[str], extra: dict) -> list:
        out = fn(completions=completions, **columns, **extra)
        if not isinstance(out, (list, tuple)) or len(out) != len(completions):
            got = len(out) if isinstance(out, (list, tuple)) else type(out).__name__
            raise RewardError(name, ids[0] if len(ids) == 1 else None,
                              f"returned {got} values for {len(completions)} completions (samples {ids})")
        return list(out)

    def _run_one(
        self, r: int, completions: list, columns: dict, ids: list[str], extra: dict
    ) -> tuple[list[float], int]:
        fn, name = self.functions[r], self.names[r]
        try:
            raw = self._call(fn, name, completions, columns, ids, extra)
        except RewardError:
            raise
        except Exception:  # find the sample(s) it fails on
            raw = []
            for i, sid in enumerate(ids):
                one = {k: v[i : i + 1] for k, v in columns.items()}
                try:
                    raw.append(self._call(fn, name, completions[i : i + 1], one, [sid], extra)[0])
                except RewardError:
                    raise
                except Exception as e:  # noqa: BLE001 - reported with the sample id
                    if self.on_error == "raise":
                        raise RewardError(name, sid, f"raised {type(e).__name__}: {e}") from e
                    raw.append(_FAILED)
        values, errors = [], 0
        for value, sid in zip(raw, ids):
            number = None if value is _FAILED else _number(value)
            if number is None:
                reason = "raised" if value is _FAILED else f"returned {value!r}, not a finite number or None"
                number, errors = self._fail(name, sid, reason), errors + 1
            values.append(number)
        return values, errors

    def __call__(
        self, completions: list, columns: dict[str, list], sample_ids: list[str], **extra: Any
    ) -> RewardResult:
        n = len(completions)
        if len(sample_ids) != n:
            raise ValueError(f"{len(sample_ids)} sample ids for {n} completions")
        columns = dict(columns)
        for key in [k for k, v in extra.items() if isinstance(v, (list, tuple)) and len(v) == n]:
            columns[key] = extra.pop(key)  # a per-completion list given as a keyword: treat it as a column
        for key, col in columns.items():
            if len(col) != n:
                raise ValueError(f"column {key!r} has {len(col)} values for {n} completions")
        per_fn, errors = [], 0
        for r in range(len(self.functions)):
            values, errs = self._run_one(r, list(completions), dict(columns), [str(s) for s in sample_ids], extra)
            per_fn.append(values)
            errors += errs
        values_t = torch.tensor(per_fn, dtype=torch.float32).T.reshape(n, len(self.functions))  # [N, R]
        return RewardResult(values=values_t, errors=errors, names=list(self.names))


_FAILED = object()  # marks a (function, sample) that raised under on_error="zero"
