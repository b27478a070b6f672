"""Reward functions (TRL convention) and the runner that turns them into a [N, R] tensor.

Convention shared with TRL (GRPOTrainer reward functions): `fn(completions, **columns) -> list[float | None]`,
one entry per completion; dataset columns arrive as keyword lists of the same length; None means
"not applicable to this sample" (left out of that sample's baseline, see advantages.py). A
function should accept `**kwargs`: the runner passes every column and the global extras, and the
trainer adds what TRL's GRPOTrainer adds: `prompts` (each completion's chat messages),
`completion_ids` and `trainer_state` (a transformers `TrainerState`: `global_step`, `max_steps`).

Completions come in TRL's shape for conversational data, which every mmgrpo prompt is: each one a
list `[{"role": "assistant", "content": text}]` (`reward.completions=text` passes plain strings
instead). A `module:Class` spec (ms-swift's ORM plugins: a class whose instances are called as
`orm(completions, solution, **kwargs)`) is instantiated once and given strings, as ms-swift does;
the built-ins accept both shapes. A reward that needs a package that is not installed (TRL's
`accuracy_reward` needs `math_verify`) stops the run with an error naming it, whatever `on_error`.

Each call runs in its own daemon thread and is waited for at most `timeout_s` (a reward function
that never returns would otherwise stall the run forever). Python cannot kill a thread, so a call
that times out is left running; being a daemon, nothing waits for it at interpreter exit. Calls
still happen one at a time in a fixed order, so functions drawing from Python's `random` or
NumPy's global RNG (seeded per step by the trainer) draw the same numbers as plain calls would;
only a hung call that later wakes up can still draw from them. The limit: a call stuck inside C
code that holds the GIL (catastrophic regex backtracking in `re`) blocks the waiting thread too,
so it is noticed only when it returns; no in-process timeout can stop that, only a subprocess can.
"""
from __future__ import annotations

import contextvars
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from mmgrpo.answers import PROBLEM_TYPES, infer_problem_type, score_answer
from mmgrpo.config import RewardConfig
from mmgrpo.tools.base import CALL_OPEN, ERROR_PREFIX, parse_call
from mmgrpo.trainer.advantages import MAX_ABS_REWARD

RewardFn = Callable[..., list]

# A function with this many timed-out calls still running is not called again until one of them
# returns: its samples fail at once. This bounds the threads a stuck function leaks, and the time
# it costs (otherwise one timeout per group, every step), and it stops piling calls onto a
# function whose earlier calls may hold what the next needs.
MAX_HUNG_CALLS = 8


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


def _messages(completion: Any) -> list:
    """A TRL conversational completion as its list of messages (a string: none)."""
    if isinstance(completion, str):
        return []
    return [completion] if isinstance(completion, dict) else list(completion or [])


def _turns(completion: Any) -> tuple[list[str], int]:
    """(assistant turns, tool answers) of a completion: a TRL conversational list of a multi-turn
    rollout, or a plain string (one turn, no tools)."""
    if isinstance(completion, str):
        return [completion], 0
    messages = _messages(completion)
    turns = [completion_text([m]) for m in messages if m.get("role", "assistant") == "assistant"]
    return turns, sum(m.get("role") == "tool" for m in messages)


def tool_format(completions: list, **kwargs: Any) -> list[float | None]:
    """Share of well-formed turns in a multi-turn completion (ARTIST §3.3's format reward): each
    turn before the last holds one parseable `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
    the last one is the answer format (`format`). A single-turn completion is scored by the last rule."""
    out: list[float | None] = []
    for comp in completions:
        turns, _ = _turns(comp)
        calls = [parse_call(t) for t in turns[:-1]]
        good = sum(c is not None and c.problem is None and t.count(CALL_OPEN) == 1 for c, t in zip(calls, turns))
        good += float(format_reward([turns[-1]])[0]) if turns else 0.0
        out.append(good / max(len(turns), 1))
    return out


def tool_cost(completions: list, **kwargs: Any) -> list[float | None]:
    """Minus the number of tool calls answered (its weight is the cost of a call): a nudge towards
    calling a tool only when it helps (Mini-o3 / DeepEyes discuss the trade-off; Pixel Reasoner
    counters the opposite failure, a policy that stops using tools, with a curiosity bonus)."""
    return [-float(_turns(comp)[1]) for comp in completions]


def tool_bonus(completions: list, **kwargs: Any) -> list[float | None]:
    """1.0 when the final answer is right (`accuracy`, same columns) and at least one tool call was
    answered without an error, else 0: DeepEyes' conditional tool reward (arXiv 2505.14362, its
    reward R = R_acc + R_format + 1[R_acc > 0] R_tool). At chance accuracy a call that works scores
    higher than a direct guess, so the policy keeps calling until it has learned to read the answer;
    a call that errors earns nothing (a tool message's `error` flag, else its "Error: " prefix)."""
    out: list[float | None] = []
    for comp, right in zip(completions, accuracy(completions, **kwargs)):
        worked = any(m.get("role") == "tool" and not m.get("error", str(m.get("content", "")).startswith(ERROR_PREFIX))
                     for m in _messages(comp) if isinstance(m, dict))
        out.append(None if right is None else float(right == 1.0 and worked))
    return out


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "format": format_reward,
    "overlong": overlong,
    "tool_format": tool_format,
    "tool_cost": tool_cost,
    "tool_bonus": tool_bonus,
}


def load_reward(name_or_spec: str | RewardFn) -> RewardFn:
    """A built-in name (`REWARDS`), `"path/to/file.py:function"`, `"module.path:function"` (an
    importable module, e.g. `trl.rewards:think_format_reward`), or a callable (returned as is). A
    class named by a spec (ms-swift's ORM plugins) is instantiated once, without arguments."""
    if callable(name_or_spec):
        return name_or_spec
    spec = str(name_or_spec)
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown reward {spec!r}: not a built-in {sorted(REWARDS)} nor 'file.py:function' "
                         "nor 'module.path:function'")
    where, func_name = spec.rsplit(":", 1)
    module = _module_of_file(spec, Path(where)) if _names_a_file(where) else _import_module(spec, where)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {where} has no callable {func_name!r}")
    if not inspect.isclass(fn):
        return fn
    try:
        return fn()  # ms-swift builds its ORMs without arguments too
    except TypeError as e:
        raise ValueError(f"reward {spec!r}: class {func_name} cannot be built without arguments ({e})") from e


def _names_a_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where or Path(where).is_file()


def _module_of_file(spec: str, path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"reward {spec!r}: file {path} not found")
    module_name = f"mmgrpo_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"reward {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError as e:
        raise ImportError(f"reward {spec!r}: {path} {missing_package(e)}") from e
    return module


def _import_module(spec: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if getattr(e, "name", None) == name:
            raise ValueError(f"reward {spec!r}: no file {name} and no importable module {name!r}") from None
        raise ImportError(f"reward {spec!r}: module {name} {missing_package(e)}") from e


def missing_package(e: ImportError) -> str:
    """What an ImportError says is missing, as advice (TRL's own messages name the package already)."""
    name = getattr(e, "name", None)
    if name:
        top = name.split(".")[0]
        return f"needs the package {top!r}, which is not installed: pip install {top.replace('_', '-')} ({e})"
    return f"needs a package that is not installed: {e}"


def takes_text(fn: RewardFn) -> bool:
    """Functions given plain-string completions whatever `reward.completions` says: the built-ins
    (they read both shapes) and instances of a class (ms-swift's ORMs, called with strings)."""
    return fn in REWARDS.values() or not (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn))


def as_messages(completions: list) -> list:
    """TRL's shape of conversational completions: one assistant message per completion."""
    return [c if isinstance(c, list) else [{"role": "assistant", "content": c}] for c in completions]


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; names the function and the sample."""

    def __init__(self, function: str, sample_id: str | None, message: str):
        where = f" on sample {sample_id!r}" if sample_id is not None else ""
        super().__init__(f"reward function {function!r}{where}: {message}")
        self.function, self.sample_id = function, sample_id


@dataclass
class RewardResult:
    values: Tensor  # [N, R] float64 (the advantage math's dtype), NaN where a function returned None
    errors: int  # (function, sample) pairs that failed and were scored 0 (on_error="zero")
    names: list[str]  # [R] function names, for logging


class _TimedOut(Exception):
    """A call did not return within the runner's timeout (internal: never a user function's error)."""

    def __init__(self, message: str, thread: threading.Thread | None = None):
        super().__init__(message)
        self.thread = thread  # the hung call, left running; None when the call was not made


def _call_in_thread(fn: RewardFn, kwargs: dict, timeout_s: float, name: str) -> Any:
    """`fn(**kwargs)` in a daemon thread, waited for at most `timeout_s`; raises what fn raised, or
    _TimedOut, leaving the thread behind (a plain Thread, not concurrent.futures: its workers are
    joined at interpreter exit). The thread gets what the caller's thread has and a new one would
    not: its contextvars, grad mode and current CUDA device (a reward model on "cuda" must land
    on this process's GPU, not on GPU 0)."""
    box: dict[str, Any] = {}
    context = contextvars.copy_context()
    grad = torch.is_grad_enabled()
    device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def target() -> None:
        try:
            if device is not None:
                torch.cuda.set_device(device)
            with torch.set_grad_enabled(grad):
                box["out"] = context.run(fn, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed over to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name=f"mmgrpo-reward-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _TimedOut(f"did not return within {timeout_s:g} s", worker)
    if "error" in box:
        raise box["error"]
    return box["out"]


def _who(ids: list[str]) -> tuple[str | None, str]:
    """The sample an error names, and a suffix listing the samples when there are several (the G
    completions of a group share their question's id: named once)."""
    unique = list(dict.fromkeys(ids))
    return (unique[0], "") if len(unique) == 1 else (None, f" (samples {unique})")


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


def _value(raw: Any) -> float | str:
    """A returned value as a float (NaN for None), or why it is refused."""
    if raw is _FAILED:
        return "failed"  # raised or timed out, under on_error="zero" (counted, never reported)
    number = _number(raw)
    if number is None:
        return f"returned {raw!r}, not a finite number or None"
    if abs(number) > MAX_ABS_REWARD:  # False for NaN (None)
        return f"returned {raw!r}, beyond +-{MAX_ABS_REWARD:g}: the advantages' variance would overflow"
    return number


class RewardRunner:
    """Calls every reward function on a batch of completions and checks what they return.

    A function that raises is retried one completion at a time to find the culprit sample; the
    failure then raises `RewardError` (on_error="raise") or scores 0 and is counted (on_error="zero").
    A call that does not return within `timeout_s` (module docstring) is a failure of all its
    samples at once: retrying it per sample would cost G timeouts. NaN, inf, |value| >
    MAX_ABS_REWARD and non-numbers are failures of that sample too; a wrong number of values is a
    broken contract and always raises.

    `columns` are per-completion lists (dataset columns, `completion_lengths`, ...), sliced when a
    function is retried per sample; an `extra` keyword holding a list of length N is treated as
    such a column; other `extra` keywords are passed unchanged to every call
    (`max_completion_length`, `overlong_buffer`, `numeric_tolerance` for the built-ins).
    """

    def __init__(self, functions: Sequence[str | RewardFn], weights: Sequence[float],
                 on_error: Literal["raise", "zero"] = "raise", timeout_s: float = RewardConfig.timeout_s,
                 completions: Literal["messages", "text"] = RewardConfig.completions):
        if len(functions) != len(weights):
            raise ValueError(f"{len(weights)} reward weights for {len(functions)} reward functions")
        if on_error not in ("raise", "zero"):
            raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
        if completions not in ("messages", "text"):
            raise ValueError(f"completions must be 'messages' or 'text', got {completions!r}")
        if not (isinstance(timeout_s, numbers.Real) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive finite number of seconds, got {timeout_s!r}")
        self.functions = [load_reward(f) for f in functions]
        builtin = {id(fn): name for name, fn in REWARDS.items()}
        self.names = [
            f if isinstance(f, str) else builtin.get(id(f), getattr(f, "__name__", repr(f))) for f in functions
        ]
        # [R] True: this function gets plain strings, False: TRL's conversational messages
        self.text = [completions == "text" or takes_text(fn) for fn in self.functions]
        self.weights = torch.tensor([float(w) for w in weights])  # [R]
        self.on_error, self.timeout_s = on_error, float(timeout_s)
        self.hung: list[list[threading.Thread]] = [[] for _ in self.functions]  # [R] timed-out calls

    def _fail(self, name: str, sample_id: str, message: str) -> float:
        if self.on_error == "raise":
            raise RewardError(name, sample_id, message)
        return 0.0

    def _call(self, r: int, completions: list, columns: dict, ids: list[str], extra: dict) -> list:
        shaped = completions if self.text[r] else as_messages(completions)
        kwargs = dict(completions=shaped, **columns, **extra)  # a clash raises here, as a call would
        hung = self.hung[r] = [t for t in self.hung[r] if t.is_alive()]
        if len(hung) >= MAX_HUNG_CALLS:
            raise _TimedOut(f"not called: {len(hung)} earlier calls did not return within {self.timeout_s:g} s "
                            "and are still running")
        try:
            out = _call_in_thread(self.functions[r], kwargs, self.timeout_s, self.names[r])
        except _TimedOut as e:
            hung.append(e.thread)
            raise
        if not isinstance(out, (list, tuple)) or len(out) != len(completions):
            got = len(out) if isinstance(out, (list, tuple)) else type(out).__name__
            sample, listed = _who(ids)
            message = f"returned {got} values for {len(completions)} completions{listed}"
            raise RewardError(self.names[r], sample, message)
        return list(out)

    def _retry_each(self, r: int, completions: list, columns: dict, ids: list[str], extra: dict) -> list:
        """After the call on all samples raised: one call per sample, to name the culprit(s). A retry
        that times out also fails the samples not retried yet: the hung call may hold what every
        later call needs (a lock, a server), and each of them could cost another timeout."""
        name, raw = self.names[r], []
        for i, sid in enumerate(ids):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            try:
                raw.append(self._call(r, completions[i : i + 1], one, [sid], extra)[0])
            except RewardError:
                raise
            except _TimedOut as e:
                if self.on_error == "raise":
                    raise RewardError(name, sid, str(e)) from None
                return raw + [_FAILED] * (len(ids) - i)
            except Exception as e:  # noqa: BLE001 - reported with the sample id
                if self.on_error == "raise":
                    raise RewardError(name, sid, f"raised {type(e).__name__}: {e}") from e
                raw.append(_FAILED)
        return raw

    def _run_one(
        self, r: int, completions: list, columns: dict, ids: list[str], extra: dict
    ) -> tuple[list[float], int]:
        name = self.names[r]
        try:
            raw = self._call(r, completions, columns, ids, extra)
        except RewardError:
            raise
        except ImportError as e:  # a missing package fails every sample: no retries, whatever on_error
            raise RewardError(name, None, missing_package(e)) from e
        except _TimedOut as e:  # all its samples fail at once (see the class docstring)
            if self.on_error == "raise":
                sample, listed = _who(ids)
                raise RewardError(name, sample, f"{e}{listed}") from None
            raw = [_FAILED] * len(ids)
        except Exception:  # find the sample(s) it fails on
            raw = self._retry_each(r, completions, columns, ids, extra)
        values, errors = [], 0
        for value, sid in zip(raw, ids):
            number = _value(value)
            if isinstance(number, str):
                number, errors = self._fail(name, sid, number), errors + 1
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
        values_t = torch.tensor(per_fn, dtype=torch.float64).T.reshape(n, len(self.functions))  # [N, R]
        return RewardResult(values=values_t, errors=errors, names=list(self.names))


_FAILED = object()  # marks a (function, sample) that raised or timed out under on_error="zero"
