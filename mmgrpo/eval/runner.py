"""`evaluate`: batched generation over a list of samples, answers scored as the rewards score them,
predictions written (and resumed) per batch, metrics computed from the records.

The trainer calls it every `eval.every` steps on its held-out set with `out_dir=None` and logs
`result.flat_metrics()`; `mmgrpo eval` calls it with an output folder.

Several processes (`state` from accelerate, e.g. under `accelerate launch` / torchrun): each process
generates a contiguous share of the pending samples (`split_between_processes`); after every batch
the new records of all processes are gathered (`gather_object`) and the main process alone appends
them to the one predictions.jsonl, so resuming works as with one process.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from mmgrpo.config import EvalConfig, VisionConfig
from mmgrpo.eval.bench import LoadError, labels
from mmgrpo.eval.metrics import CORRECT_THRESHOLD, EvalMetrics, PredictionRecord, compute_metrics, majority_vote
from mmgrpo.eval.scoring import score_output
from mmgrpo.eval.store import METRICS, PredictionStore
from mmgrpo.models.generate import Sampling, generate_texts
from mmgrpo.models.special import special_ids
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.sample import BadSampleError, PromptInputs, Sample


@dataclass
class EvalResult:
    metrics: EvalMetrics
    records: list[PredictionRecord]  # one per sample, in sample order (resumed ones included)
    out_dir: Path | None
    generated: int  # samples evaluated by this call; the rest came from an earlier, interrupted run

    def flat_metrics(self) -> dict[str, float]:
        return self.metrics.flat()


def error_record(item: Sample | LoadError, error: str, kind: str) -> PredictionRecord:
    if isinstance(item, LoadError):
        return PredictionRecord(id=item.id, task=item.task, problem_type="unknown", reference=None,
                                source=item.source, error=error, error_kind=kind)
    lab = labels(item)
    return PredictionRecord(id=item.id, task=lab.task, problem_type=item.problem_type, reference=item.answer,
                            category=lab.category, duration=lab.duration, source=item.source, error=error, error_kind=kind)


def prediction_record(sample: Sample, texts: list[str], num_tokens: list[int], latency_s: float,
                      numeric_tolerance: float) -> PredictionRecord:
    """Score each of the K completions; the final answer is the single one (K = 1) or the vote."""
    parsed, scores = zip(*(score_output(t, sample, numeric_tolerance) for t in texts))
    answer, score = majority_vote(list(parsed), list(scores))
    lab = labels(sample)
    return PredictionRecord(
        id=sample.id,
        task=lab.task,
        problem_type=sample.problem_type,
        reference=sample.answer,
        raw_outputs=list(texts),
        parsed_answers=list(parsed),
        scores=list(scores),
        output_tokens=list(num_tokens),
        answer=answer,
        score=score,
        correct=score >= CORRECT_THRESHOLD,
        latency_s=latency_s,
        category=lab.category,
        duration=lab.duration,
        source=sample.source,
    )


def run_batch(
    model: torch.nn.Module,
    processor,
    encoder: PromptEncoder,
    items: Sequence[Sample | LoadError],
    cfg: EvalConfig,
    seed: int,
    strict: bool,
    numeric_tolerance: float,
) -> list[PredictionRecord]:
    """Records for `items` (same order): encode, one `generate` call (greedy for K = 1, else K samples
    at `cfg.temperature` drawn with `seed`), score. A sample that cannot be encoded becomes an error
    record (raised with `strict`). Latency = batch wall time (encoding included) / samples generated."""
    t0 = time.perf_counter()
    records: dict[str, PredictionRecord] = {}
    prompts: list[PromptInputs] = []
    for item in items:
        if isinstance(item, LoadError):
            if strict:
                raise BadSampleError(item.id, item.error, item.kind)
            records[item.id] = error_record(item, item.error, item.kind)
            continue
        try:
            prompts.append(encoder.encode(item))
        except BadSampleError as e:
            if strict:
                raise
            records[item.id] = error_record(item, str(e), e.kind)
    if prompts:
        k = cfg.num_samples
        sampling = Sampling(cfg.max_new_tokens, temperature=cfg.temperature if k > 1 else 0.0, top_p=1.0, top_k=0)
        out = generate_texts(model, processor.tokenizer, special_ids(model, processor.tokenizer), prompts, sampling,
                             num_samples=k, seed=seed)
        latency = (time.perf_counter() - t0) / len(prompts)
        for i, p in enumerate(prompts):
            rows = slice(i * k, (i + 1) * k)
            records[p.sample.id] = prediction_record(p.sample, list(out.texts[rows]), list(out.num_tokens[rows]), latency,
                                                       numeric_tolerance)
    return [records[item.id] for item in items]


def _check_ids(items: Sequence[Sample | LoadError]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"sample id {item.id!r} appears twice; ids must be unique to resume (bench.unique_ids)")
        seen.add(item.id)


def evaluate(
    model: torch.nn.Module,
    processor,
    samples: Sequence[Sample | LoadError],
    cfg: EvalConfig,
    vision: VisionConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    *,
    numeric_tolerance: float,
    strict: bool = False,
    encoder: PromptEncoder | None = None,
    on_batch: Callable[[list[PredictionRecord]], None] | None = None,
    state: Any = None,
) -> EvalResult:
    """Evaluate `samples` (the first `cfg.limit` of them). With `out_dir`, predictions are appended
    to `out_dir/predictions.jsonl` after every batch and ids already there are not evaluated again;
    metrics.json is written at the end. The model's train/eval mode is restored afterwards.
    `numeric_tolerance`: relative tolerance of numeric answers, the training reward's
    (`reward.numeric_tolerance`), so that evaluation and training score alike.
    `state`: an accelerate `PartialState` / `Accelerator` to shard over its processes (every process
    calls `evaluate` and gets the whole result; only the main process writes)."""
    items = list(samples[: cfg.limit] if cfg.limit else samples)
    _check_ids(items)
    shards = Shards(state)
    store = PredictionStore(out_dir) if out_dir is not None and shards.main else None
    done = shards.broadcast({r.id: r for r in store.load()} if store is not None else {})
    pending = [it for it in items if it.id not in done]
    encoder = encoder or PromptEncoder(processor, vision or VisionConfig())
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="sample", desc="eval",
               disable=not (progress and shards.main))
    try:
        for b, batch in enumerate(shards.batches(pending, cfg.batch_size)):
            seed = cfg.seed + b * shards.count + shards.index  # one process: cfg.seed + b
            new = shards.gather(run_batch(model, processor, encoder, batch, cfg, seed, strict, numeric_tolerance))
            if store is not None:
                store.append(new)  # flushed: a kill now loses nothing of this batch
            done.update((r.id, r) for r in new)
            bar.update(len(new))
            bar.set_postfix(acc=f"{sum(r.correct for r in done.values()) / len(done):.3f}")
            if on_batch is not None:
                on_batch(new)
    finally:
        bar.close()
        model.train(was_training)
    records = [done[it.id] for it in items]
    metrics = compute_metrics(records)
    if out_dir is not None and shards.main:
        (Path(out_dir) / METRICS).write_text(json.dumps(metrics.to_json(), indent=2) + "\n")
    return EvalResult(metrics=metrics, records=records, out_dir=Path(out_dir) if out_dir else None, generated=len(pending))


class Shards:
    """This process's part of an evaluation over `state`'s processes (one process when None)."""

    def __init__(self, state: Any = None):
        self.state = state
        self.count = state.num_processes if state is not None else 1
        self.index = state.process_index if state is not None else 0
        self.main = state.is_main_process if state is not None else True

    def batches(self, pending: list, batch_size: int) -> list[list]:
        """This process's batches of its contiguous share. Every process gets the same number of
        batches (some empty), since each batch ends with a gather all of them must join."""
        if self.count == 1:
            return [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
        with self.state.split_between_processes(pending) as mine:
            mine = list(mine)
        rounds = math.ceil(math.ceil(len(pending) / self.count) / batch_size)  # the largest share's batches
        return [mine[i * batch_size : (i + 1) * batch_size] for i in range(rounds)]

    def gather(self, records: list[PredictionRecord]) -> list[PredictionRecord]:
        return records if self.count == 1 else gather_object(records)

    def broadcast(self, obj: dict) -> dict:
        """The main process's object on every process (the store may live on the main node only)."""
        return obj if self.count == 1 else broadcast_object_list([obj])[0]
