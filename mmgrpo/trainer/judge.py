"""LLM-as-judge rewards: a judge model grades each completion against the reference answer.

    query  = reward.judge.template with {question}, {reference}, {answer}, {completion}
    reply  = the judge's answer: an OpenAI-compatible server (vLLM, SGLang, a hosted API) over HTTP,
             or a local Hugging Face causal LM / VLM loaded once in the trainer process
    score  = the one match of reward.judge.score_pattern in the reply, within [min_score, max_score]
    reward = (score - min_score) / (max_score - min_score), in [0, 1]

Listed as `judge` in reward.functions; it follows the TRL reward convention like the built-ins.
Failures are counted and never a silent 0: a request that errors or times out is tried again
`retries` times, then counted (judge_failures); a reply without exactly one score in range is a
parse failure (judge_parse_failures, not retried: the judge would say the same). Either way the
completion's judge reward is None, which leaves it out of its group's baseline for this term (the
completion keeps its other rewards); with on_failure="raise" a JudgeError names the sample instead.
Identical queries are asked once: parsed scores are cached (LRU, cache_size); failures are not.
Queries of a call go out together: batch_size concurrent requests (HTTP) or rows per generate call
(local). Counters (metrics count/judge_*): requests, cache_hits, retries, failures, parse_failures.
"""
from __future__ import annotations

import math
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from mmgrpo.answers import answer_text
from mmgrpo.config import JudgeConfig
from mmgrpo.trainer.rewards import completion_text


class JudgeError(RuntimeError):
    """The judge failed on a sample and reward.judge.on_failure is "raise"."""


class ParseError(ValueError):
    """A judge reply without exactly one score in range."""


def parse_score(reply: str, pattern: str, lo: float, hi: float) -> float:
    """The reply's score mapped to [0, 1]; ParseError unless the pattern matches exactly once and
    the number lies in [lo, hi]."""
    found = re.findall(pattern, reply or "")
    if len(found) != 1:
        raise ParseError(f"{len(found)} matches of the score pattern in {reply[:200]!r}")
    try:
        value = float(found[0])
    except ValueError:
        raise ParseError(f"score {found[0]!r} is not a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ParseError(f"score {value:g} outside [{lo:g}, {hi:g}]")
    return (value - lo) / (hi - lo)


def question_of(columns: dict[str, list], i: int) -> str:
    """The question of completion i: a `question` / `problem` column, else the user text of a TRL
    `prompt` or ms-swift `messages` column."""
    for key in ("question", "problem"):
        if columns.get(key) is not None and columns[key][i] is not None:
            return str(columns[key][i])
    for key in ("prompt", "messages"):
        value = columns.get(key)[i] if columns.get(key) is not None else None
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if users:
                return completion_text([{**users[-1], "role": "assistant"}])
    raise JudgeError("the judge needs the question: a `question`, `problem`, `prompt` or `messages` column")


def reference_of(columns: dict[str, list], i: int) -> str | None:
    for key in ("answer", "solution"):
        if columns.get(key) is not None and columns[key][i] is not None:
            return str(columns[key][i])
    return None


class OpenAIBackend:
    """Chat completions of an OpenAI-compatible server, `batch_size` requests at a time. The client
    does no retries of its own (max_retries=0): ours are counted."""

    def __init__(self, cfg: JudgeConfig):
        try:
            from openai import OpenAI
        except ImportError as e:
            raise ImportError("reward.judge.backend=openai needs the openai client: pip install 'mmgrpo[judge]'") from e
        base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError("reward.judge.base_url is not set and neither is $OPENAI_BASE_URL")
        key = cfg.api_key or os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers accept any key
        self.cfg = cfg
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=cfg.timeout_s, max_retries=0)
        self.pool = ThreadPoolExecutor(cfg.batch_size, thread_name_prefix="mmgrpo-judge")

    def ask(self, query: str) -> str:
        out = self.client.chat.completions.create(model=self.cfg.model, messages=[{"role": "user", "content": query}],
                                                  max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature)
        return out.choices[0].message.content or ""

    def complete(self, queries: list[str], attempt: Callable[[Callable[[], str]], str | Exception]) -> list:
        return list(self.pool.map(lambda q: attempt(lambda: self.ask(q)), queries))


class HFBackend:
    """A local model (models/textgen.py), loaded once; `batch_size` queries per generate call."""

    def __init__(self, cfg: JudgeConfig, device):
        from mmgrpo.models.textgen import load_text_model

        self.cfg = cfg
        self.model = load_text_model(cfg.model, cfg.dtype, device or "cpu")

    def complete(self, queries: list[str], attempt: Callable[[Callable[[], str]], str | Exception]) -> list:
        from mmgrpo.models.textgen import generate_replies

        out: list = []
        for k in range(0, len(queries), self.cfg.batch_size):
            chunk = queries[k : k + self.cfg.batch_size]
            replies = attempt(lambda: generate_replies(self.model, chunk, self.cfg.max_new_tokens,
                                                       self.cfg.temperature))
            out += [replies] * len(chunk) if isinstance(replies, Exception) else replies
        return out


class JudgeReward:
    """The `judge` reward function: fn(completions, **columns) -> list[float | None]."""

    __name__ = "judge"

    def __init__(self, cfg: JudgeConfig, backend):
        self.cfg, self.backend = cfg, backend
        self.cache: OrderedDict[str, float] = OrderedDict()
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()  # counts are bumped from the backend's worker threads

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[f"judge_{key}"] = self.counts.get(f"judge_{key}", 0) + n

    def pop_counts(self) -> dict[str, int]:
        """Counts since the last call (the trainer adds them to its counters)."""
        with self.lock:
            out, self.counts = self.counts, {}
        return out

    def attempt(self, request: Callable[[], Any]) -> Any:
        """`request()` with up to cfg.retries further tries; the last exception when all fail."""
        for k in range(self.cfg.retries + 1):
            self._count("requests")
            try:
                return request()
            except Exception as e:  # noqa: BLE001 - transport / server errors and timeouts alike
                last = e
                if k < self.cfg.retries:
                    self._count("retries")
        return last

    def query(self, completion: Any, columns: dict[str, list], i: int) -> str | None:
        reference = reference_of(columns, i)
        if reference is None:
            return None
        text = completion_text(completion)
        return self.cfg.template.format(question=question_of(columns, i), reference=reference,
                                        answer=answer_text(text), completion=text)

    def __call__(self, completions: list, **columns: Any) -> list[float | None]:
        columns = {k: v for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == len(completions)}
        queries = [self.query(c, columns, i) for i, c in enumerate(completions)]
        todo = sorted({q for q in queries if q is not None and q not in self.cache})
        hits = sum(1 for q in queries if q is not None and q in self.cache)
        if hits:
            self._count("cache_hits", hits)
        replies = dict(zip(todo, self.backend.complete(todo, self.attempt))) if todo else {}
        out: list[float | None] = []
        for q in queries:
            out.append(None if q is None else self._score(q, replies))
        return out

    def _score(self, q: str, replies: dict) -> float | None:
        if q in self.cache:
            self.cache.move_to_end(q)
            return self.cache[q]
        reply = replies[q]
        try:
            if isinstance(reply, Exception):
                self._count("failures")
                raise JudgeError(f"request failed after {self.cfg.retries + 1} tries: {type(reply).__name__}: {reply}")
            try:
                score = parse_score(reply, self.cfg.score_pattern, self.cfg.min_score, self.cfg.max_score)
            except ParseError as e:
                self._count("parse_failures")
                raise JudgeError(f"unparsable reply: {e}") from None
        except JudgeError:
            if self.cfg.on_failure == "raise":  # the reward runner names the sample
                raise
            return None
        self.cache[q] = score
        while len(self.cache) > self.cfg.cache_size:
            self.cache.popitem(last=False)
        return score


BACKENDS = {"openai": lambda cfg, device: OpenAIBackend(cfg), "hf": HFBackend}


def make_judge(cfg: JudgeConfig, device=None) -> JudgeReward:
    return JudgeReward(cfg, BACKENDS[cfg.backend](cfg, device))
