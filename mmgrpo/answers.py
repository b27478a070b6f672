"""The answer vocabulary, in one place: problem types, the answer a completion gives, the reference
answer of a dataset row in canonical form, problem-type inference, and scoring. The accuracy reward,
the dataset loaders and the evaluator all use these functions, so a checkpoint's evaluation accuracy
and its training reward read answers the same way.

Everything compares *whole* answers. A substring check (`gt in ans or ans in gt`) is the classic
reward hack: an empty answer is a substring of everything and "A or B or C" contains the right
letter. Here an empty answer, or a hedge listing several options, never scores.
"""
from __future__ import annotations

import json
import math
import re
import string
from functools import lru_cache
from typing import Any, Sequence

PROBLEM_TYPES = ("multiple_choice", "numeric", "exact", "free_text", "temporal_iou")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# "A or B", "A, B", "(A)/(B)", "A and B": several standalone option letters offered at once
_LETTER_HEDGE = re.compile(r"\b([A-Z])\b\)?[.:]?\s*(?:,|/|\||&|\bor\b|\band\b)\s*\(?\b([A-Z])\b")
_WHOLE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_LEADING_LETTER = re.compile(r"\(?([A-Z])(?:\)|\.|:|\)\.)\s+\S")  # "B) text", "B. text", "(B) text"
_ANSWER_IS = re.compile(r"(?i:answer|option|choice)\s*(?i:is|:|=)?\s*(?i:option\s*)?\(?([A-Z])\b\)?")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_NUMBER_STRICT = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?"
)
_ANSWER_NUMBER = re.compile(r"answer\s*(?:is|:|=)\s*\$?\s*([-+]?[\d.,]+(?:[eE][-+]?\d+)?)", re.IGNORECASE)
# A whole answer that is a list of 2+ single letters / numbers: "A or B or C", "3, 4", "1 and 2".
# ("," must be followed by a space so that "1,234" stays one number; "/" is left to fractions.)
_ITEM = r"\(?(?:[A-Za-z]|[-+]?\d+(?:\.\d+)?)\)?"
_SEP = r"(?:\s*,\s+|\s*;\s*|\s*\|\s*|\s*&\s*|\s+or\s+|\s+and\s+)"
_HEDGE_LIST = re.compile(rf"\s*{_ITEM}(?:{_SEP}{_ITEM})+\s*[.!]?\s*", re.IGNORECASE)


def extract_answer_tag(text: str) -> str | None:
    """Content of the *last* `<answer>...</answer>` (stripped), or None when there is none."""
    found = _ANSWER_TAG.findall(text or "")
    return found[-1].strip() if found else None


def answer_text(text: str) -> str:
    """The answer part of a completion: the last answer tag's content, else the whole text."""
    tagged = extract_answer_tag(text)
    return (tagged if tagged is not None else (text or "")).strip()


def is_hedge(text: str) -> bool:
    """True when the whole answer lists several alternatives ("A or B or C", "3, 4", "1 and 2")."""
    s = (text or "").replace("*", "").strip()
    if not _HEDGE_LIST.fullmatch(s):
        return False
    items = re.split(_SEP, s, flags=re.IGNORECASE)
    return len({t.strip("().! ").lower() for t in items}) > 1


def parse_choice(text: str, n_options: int | None = None) -> str | None:
    """The option letter a (possibly tagged) answer picks, or None when it picks none or several.

    Accepts "B", "(B)", "B.", "b", "answer: B", "The answer is (B)", "<answer>B</answer>",
    "B) text", "B. text". Rejects "", "A or B or C", "A, B", letters beyond `n_options`.
    """
    valid = string.ascii_uppercase[: (n_options or 26)]
    s = answer_text(text).replace("*", "").strip()
    if not s or is_hedge(s) or _LETTER_HEDGE.search(s):
        return None
    candidates: list[str] = []
    if m := _WHOLE_LETTER.fullmatch(s):
        candidates = [m.group(1).upper()]
    elif m := _LEADING_LETTER.match(s):
        # "B) text" picks B, unless the text goes on to offer another "(X)"
        candidates = sorted({m.group(1), *_PAREN_LETTER.findall(s)})
    elif found := _ANSWER_IS.findall(s):
        candidates = [found[-1].upper()]  # the final statement wins in a long text
    elif found := set(_PAREN_LETTER.findall(s)):
        candidates = sorted(found)  # several distinct "(X)" = no single choice
    if len(candidates) == 1 and candidates[0] in valid:
        return candidates[0]
    return None


def _to_float(token: str) -> float | None:
    token = token.replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_number(text: str) -> float | None:
    """The single number of an answer ("1,234.5", "-3", "3/4", "50%", "$12", "1e-3"), else None.

    Tagged or short answers must contain exactly one distinct number ("3 or 5" -> None). A long
    untagged text uses the number after "answer is"/"answer:" when there is one.
    """
    raw = text or ""
    s = answer_text(raw).replace("$", "").replace("%", "")
    if not s or is_hedge(s):
        return None
    if extract_answer_tag(raw) is None and (m := _ANSWER_NUMBER.findall(s)):
        return _to_float(m[-1].rstrip(".,"))
    values = {v for v in (_to_float(t) for t in _NUMBER_STRICT.findall(s)) if v is not None}
    return values.pop() if len(values) == 1 else None


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style answer normalisation)."""
    s = (text or "").lower()
    s = "".join(" " if ch in string.punctuation else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (rouge-score library, Porter stemming); 0 when either side is empty."""
    if not (pred or "").strip() or not (ref or "").strip():
        return 0.0
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


def parse_interval(value: str | Sequence[float]) -> tuple[float, float] | None:
    if isinstance(value, str):
        nums = [_to_float(t) for t in _NUMBER_STRICT.findall(answer_text(value)) if "/" not in t]
        if len(nums) != 2 or None in nums:
            return None
        start, end = nums  # type: ignore[misc]
    else:
        if len(value) != 2:
            return None
        start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        return None
    return start, end


def temporal_iou(pred: str | Sequence[float], ref: str | Sequence[float]) -> float:
    """IoU of two [start, end] intervals (pairs, or text such as "[12.5, 30]" / "12.5 - 30 s").

    0 for anything that is not exactly one valid interval (two numbers, start <= end)."""
    a, b = parse_interval(pred), parse_interval(ref)
    if a is None or b is None:
        return 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if a == b else 0.0  # two identical instants
    return inter / union


def _option_text(option: str) -> str:
    """Option text without a leading "A." / "(A)" label."""
    return re.sub(r"^\s*\(?[A-Z]\)?[.:)]?\s+", "", option)


def choice_of(pred: str, options: Sequence[str] | None) -> str | None:
    n = len(options) if options else None
    letter = parse_choice(pred, n)
    if letter is None and options:
        # an answer that spells out exactly one option's text counts as that option
        said = normalize_text(answer_text(pred))
        hits = [i for i, o in enumerate(options) if said and normalize_text(_option_text(o)) == said]
        letter = string.ascii_uppercase[hits[0]] if len(hits) == 1 else None
    return letter


def score_answer(
    pred_text: str,
    answer: str,
    problem_type: str,
    options: Sequence[str] | None = None,
    tol: float = 1e-2,
) -> float:
    """Score in [0, 1] of a completion (tagged or not) against the reference answer.

    multiple_choice: same option letter (the reference may be "B", "(B)", "B. cat" or the option
    text); numeric: |pred - ref| <= tol * |ref| (relative); exact: equal after `normalize_text`;
    free_text: ROUGE-L F1; temporal_iou: interval IoU.
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem_type {problem_type!r}; known: {list(PROBLEM_TYPES)}")
    pred = answer_text(pred_text)
    ref = answer_text(str(answer))
    if not pred or is_hedge(pred):
        return 0.0
    if problem_type == "multiple_choice":
        got, want = choice_of(pred, options), choice_of(ref, options)
        return float(got is not None and got == want)
    if problem_type == "numeric":
        got_n, want_n = parse_number(pred), parse_number(ref)
        if got_n is None or want_n is None:
            return 0.0
        return float(got_n == want_n or abs(got_n - want_n) <= tol * abs(want_n))
    if problem_type == "exact":
        return float(normalize_text(pred) != "" and normalize_text(pred) == normalize_text(ref))
    if problem_type == "free_text":
        return rouge_l(pred, ref)
    return temporal_iou(pred, ref)


# ----------------------------------------------------------------------------------------------
# the answer a completion gives, canonical (what evaluation reports and majority votes count)


def parse_answer(text: str, problem_type: str, options: Sequence[str] | None = None) -> str | None:
    """The answer a completion gives, in the canonical spelling `score_answer` compares ("B", "(B)"
    and "answer: B" are all "B"; "3.0" and "3" are "3"), or None when it gives none (or hedges)."""
    said = answer_text(text)
    if not said or is_hedge(said):
        return None
    if problem_type == "multiple_choice":
        return choice_of(said, options)
    if problem_type == "numeric":
        value = parse_number(said)
        return None if value is None else f"{value:g}"
    if problem_type == "temporal_iou":
        interval = parse_interval(said)
        return None if interval is None else json.dumps([float(v) for v in interval])
    if problem_type == "exact":
        return normalize_text(said) or None
    return said  # free_text: the answer text itself


# ----------------------------------------------------------------------------------------------
# reference answers of dataset rows, and the problem type they imply

_LETTERED = re.compile(r"^\(?([A-Z])\)?[.):]\s*(.*)$", re.DOTALL)
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?[.):]?$")
_BARE_NUMBER = re.compile(r"[\s$%\d.,eE+\-/]+")


def is_number(v: Any) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_interval_text(answer: str) -> bool:
    try:
        value = json.loads(answer)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)


def reference_answer(value: Any) -> str | None:
    """A row's reference answer as text: `<answer>B</answer>` -> "B"; numbers and [start, end]
    lists as text ("[1, 2]" -> "[1.0, 2.0]")."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return json.dumps([float(v) for v in value]) if all(is_number(v) for v in value) else json.dumps(list(value))
    if not isinstance(value, str):
        return str(value)
    tagged = extract_answer_tag(value)
    text = (tagged if tagged is not None else value).strip()
    return reference_answer(json.loads(text)) if _is_interval_text(text) else text


def reference_letter(answer: str, options: Sequence[str]) -> str:
    """A multiple-choice reference as its letter: "B", "(B)", "B." or "B. blue" or "blue" -> "B"
    (options in the "A. text" form); anything else unchanged."""
    letters = {o[0]: o[3:] for o in options}
    only = _LETTER_ONLY.match(answer)
    if only and only.group(1) in letters:
        return only.group(1)
    lettered = _LETTERED.match(answer)
    if lettered and lettered.group(1) in letters:
        return lettered.group(1)
    by_text = [k for k, v in letters.items() if v.strip().lower() == answer.strip().lower()]
    return by_text[0] if len(by_text) == 1 else answer


def infer_problem_type(answer: str | None, options: Sequence[str] | None) -> str:
    """When a row names no problem type: options -> multiple_choice; a [start, end] pair ->
    temporal_iou; one number ("3", "1,234.5", "3/4", "50%", "$12") -> numeric; else exact."""
    if options:
        return "multiple_choice"
    if answer is None:
        return "exact"
    said = answer_text(str(answer))
    if _is_interval_text(said):
        return "temporal_iou"
    if parse_number(said) is not None and _BARE_NUMBER.fullmatch(said):
        return "numeric"
    return "exact"
