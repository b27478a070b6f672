"""The GRPO-family training loop. It reads like the algorithm: one call per phase, each returning a
new frozen record (trainer/records.py).

    for step:
        prompts         = next_prompts(run)                   # data order, whole groups per process
        batch           = sample_round(run, prompts)          # G completions per prompt (prompt encoded once),
                                                              # rewards [B, G, R], T-GRPO's temporal bonus
        batch           = dynamic_sampling(run, batch)        # DAPO §3.2: flat groups replaced by new ones
        groups, rewards = difficulty_augment(run, ...)        # DA: harder / easier copies (DeepVideo-R1 §3.3)
        step            = advantages(run, groups, rewards)    # group-normalised advantages, once
        stats           = policy_update(parts, step, ...)     # loss + backward + optimizer step
        evaluate / log / save
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmgrpo.config import TrainConfig
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.augment_phase import difficulty_augment
from mmgrpo.trainer.metrics import step_metrics
from mmgrpo.trainer.dynamic import dynamic_sampling, sample_round, sampling_metrics
from mmgrpo.trainer.phases import advantages, next_prompts, timed
from mmgrpo.trainer.records import ScoredStep
from mmgrpo.trainer.setup import Run, save, setup
from mmgrpo.trainer.temporal import temporal_metrics
from mmgrpo.trainer.tool_rollout import tool_metrics
from mmgrpo.trainer.update import NonFiniteGradientError, policy_update


def seed_everything(seed: int) -> None:
    """torch (dropout) and, for user reward functions, Python's `random` and NumPy: every step's
    randomness is a function of (seed, step, process), so a resumed run draws the same numbers."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def train_step(run: Run, timings: dict[str, float]) -> tuple[ScoredStep, dict[str, float]]:
    """One GRPO step: (the scored step, the update's and the sampling's statistics)."""
    batch = sample_round(run, next_prompts(run), timings)
    batch = dynamic_sampling(run, batch, timings)
    with timed(timings, "augment"):
        groups, rewards = difficulty_augment(run, batch.groups, batch.rewards)
    step = advantages(run, groups, rewards)
    stats = policy_update(run.parts, step, run.update_settings, timings)
    run.backend.sync(run.policy)
    return step, {**stats, **sampling_metrics(run, batch), **temporal_metrics(run, batch.temporal),
                  **tool_metrics(step.groups)}


def train(cfg: TrainConfig, run: Run | None = None) -> Path:
    """Run GRPO-family training; returns the final checkpoint folder."""
    run = run or setup(cfg)
    acc = run.accelerator
    bar = tqdm(total=cfg.max_steps, initial=run.state.step, disable=not (cfg.progress_bar and acc.is_main_process))
    try:
        last = run_steps(run, bar)
    finally:  # a failed run still stops its rollout engine and MCP servers, closes its logs and, last,
        bar.close()  # releases the output_dir lock (the logger holds it)
        run.backend.close()
        if run.tool_env is not None:
            run.tool_env.toolbox.close()
        run.logger.close()
    return last or ckpt.checkpoint_dir(cfg.output_dir, run.state.step)


def run_steps(run: Run, bar) -> Path | None:
    """Steps until max_steps, saving every save_every and at the end; returns the last checkpoint."""
    cfg, acc = run.cfg, run.accelerator
    last = None
    timings: dict[str, float] = {}
    while run.state.step < cfg.max_steps:
        t0 = time.perf_counter()
        seed_everything(ckpt.step_seed(cfg.seed, run.state.step, 10_000 + acc.process_index))
        try:
            step, stats = train_step(run, timings)
        except NonFiniteGradientError as e:  # name the step: the user resumes from the checkpoint before it
            raise NonFiniteGradientError(f"step {run.state.step + 1}: {e}") from None
        run.state.step += 1
        if run.eval_samples and cfg.eval.every and run.state.step % cfg.eval.every == 0:
            with timed(timings, "eval"):
                stats = {**stats, **evaluate_heldout(run)}
        metrics = step_metrics(run, step, stats, timings, time.perf_counter() - t0)
        if run.state.step % cfg.log_every == 0:
            run.logger.log(run.state.step, metrics)
        if cfg.sample_every and run.state.step % cfg.sample_every == 0:
            run.logger.log_samples(run.state.step, sample_records(step))
        show_step(run, bar, metrics)
        timings = {}
        if cfg.save_every and run.state.step % cfg.save_every == 0:  # after the log: a kill mid-save replays
            with timed(timings, "save"):  # the step; its time is logged with the next step
                last = save(run)
    if last is None or run.state.step % max(cfg.save_every, 1):
        last = save(run)
    return last


HELD_OUT_SHOWN = ("accuracy", "invalid_format_rate", "error_rate")  # printed; all of them go to the metrics


def show_step(run: Run, bar, metrics: dict[str, float]) -> None:
    """The progress bar's figures: the reward (and accuracy) move while a Reg-GRPO loss sits near 1
    by construction (a z-scored regression), the share of flat groups says how much the step had
    to learn from. Held-out results and steps that train on nothing are printed (main process)."""
    bar.update(1)
    shown = {"reward": f"{metrics['reward/mean']:.3f}"}
    if "accuracy" in metrics:
        shown["acc"] = f"{metrics['accuracy']:.3f}"
    shown.update(flat=f"{metrics['zero_std_frac']:.2f}", loss=f"{metrics['loss']:.4f}")
    bar.set_postfix(shown)
    if not run.accelerator.is_main_process:
        return
    step = run.state.step
    held = [(k, metrics[f"eval/{k}"]) for k in HELD_OUT_SHOWN if f"eval/{k}" in metrics]
    if held:
        tqdm.write(f"[mmgrpo] step {step} held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in held))
    if metrics["zero_std_frac"] >= 1.0:
        run.flat_steps += 1
        if run.flat_steps in (1, 10, 100, 1000):  # said when it starts, then less and less often
            tqdm.write(f"[mmgrpo] WARNING step {step}: every group's completions got equal rewards, so every "
                       f"advantage is 0 and this step learned nothing from its rewards ({run.flat_steps} such "
                       "steps so far). Too easy or too hard data, too few generations, or a reward that cannot "
                       "tell completions apart; see zero_std_frac in the metrics")


def evaluate_heldout(run: Run) -> dict[str, float]:
    """Held-out evaluation, sharded over the processes (each generates its share, all get the metrics)."""
    from mmgrpo.eval.runner import evaluate

    with dist.full_params(run.accelerator, run.model):
        result = evaluate(run.policy, run.processor, run.eval_samples, run.cfg.eval, run.cfg.vision, progress=False,
                          encoder=run.encoder, state=run.accelerator,
                          numeric_tolerance=run.cfg.reward.numeric_tolerance)
    return {f"eval/{k}": v for k, v in result.flat_metrics().items()}


def sample_records(step: ScoredStep) -> list[dict]:
    """Completions of the step's first two groups, for samples.jsonl."""
    return [
        {"id": g.sample_id, "completion": t, "reward": float(r)}
        for g, total in zip(step.groups[:2], step.total[:2])
        for t, r in zip(g.texts, total.tolist())
    ]
