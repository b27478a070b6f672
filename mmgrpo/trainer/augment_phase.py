"""Difficulty-aware augmentation inside the training step (DeepVideo-R1 §3.3).

For each group the scheduler compares its mean reward with the replay window: easy groups get a
perturbed video (harder), hard groups a reasoning hint (easier). The augmented prompt is rolled out
again (G completions) and trained on with the *original* question's reward (same sample columns).
Deviation from the paper: the augmented group is added to the batch instead of replacing the
original; an original flat group has zero advantage and contributes nothing anyway.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mmgrpo.augment import answer_shown_prompt, hint_prompt, make_hint, perturb
from mmgrpo.augment.scheduler import Decision
from mmgrpo.processors.sample import PromptInputs
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer.phases import guarded, rollout_prompts, score, totals
from mmgrpo.trainer.records import RolloutGroup
from mmgrpo.trainer.reward_terms import reward_terms
from mmgrpo.trainer.setup import Run

# Seed streams of augmentation work, offset from the prompt streams (global group index < 1e5).
HARDER_STREAM, EASIER_STREAM, TRACE_STREAM = 100_000, 200_000, 300_000


def difficulty_augment(run: Run, groups: tuple[RolloutGroup, ...],
                       rewards: Tensor) -> tuple[tuple[RolloutGroup, ...], Tensor]:
    """The step's groups and rewards [B, G, R] followed by the augmented groups and their rewards;
    unchanged when augmentation is off."""
    if run.augment is None or not groups:
        return groups, rewards
    extra = augmented_groups(run, groups, totals(run, rewards))
    if not extra:
        return groups, rewards
    return groups + extra, torch.cat([rewards, score(run, extra)])  # [B + E, G, R]


def augmented_groups(run: Run, groups: tuple[RolloutGroup, ...], total: Tensor) -> tuple[RolloutGroup, ...]:
    """Decide per group (before the window moves), then roll out the harder and easier prompts."""
    sched, cfg = run.augment, run.cfg.augment
    per_group = [t.nan_to_num(0.0) for t in total]  # B x [G]
    decisions = [sched.decide(g.sample_id, t.tolist()) for g, t in zip(groups, per_group)]
    for g, t in zip(groups, per_group):
        record_traces(run, g.sample_id, g.texts, t)
    sched.observe([float(t.mean()) for t in per_group])  # after all decisions
    made: list[tuple[PromptInputs, int, Decision]] = []
    for g, d in zip(groups, decisions):
        if len(made) >= cfg.max_extra_rollouts:
            break
        # augment.easier=false: hints off; augment.harder=[]: perturbations off (the one-branch ablations
        # of DeepVideo-R1 §4.3), rather than rolling out an unperturbed copy
        if d.kind == "none" or (d.kind == "easier" and not cfg.easier) or (d.kind == "harder" and not cfg.harder):
            continue
        maker = harder_prompt if d.kind == "harder" else easier_prompt
        prompt = guarded(run, maker, run, g, d, counter="skipped_augmentations")  # media may vanish mid-run
        if prompt is not None:
            made.append((prompt, (HARDER_STREAM if d.kind == "harder" else EASIER_STREAM) + g.stream, d))
    extra: tuple[RolloutGroup, ...] = ()
    for kind in ("harder", "easier"):  # one batched rollout per kind
        chosen = [(p, s, d) for p, s, d in made if d.kind == kind]
        extra += rollout_prompts(run, [p for p, _, _ in chosen], [s for _, s, _ in chosen], kind,
                                 [d.strength for _, _, d in chosen])
    return extra


def harder_prompt(run: Run, g: RolloutGroup, d: Decision) -> PromptInputs:
    """Perturb the decoded frames (noise / masking / ...) with strength growing with |dR|."""
    gen = torch.Generator().manual_seed(ckpt.step_seed(run.cfg.seed, run.state.step, HARDER_STREAM + g.stream))
    sample = g.prompt.sample
    media = run.encoder.load_media(sample)
    changed = [dataclasses.replace(m, frames=perturb(m.frames, run.cfg.augment.harder, d.strength, gen)) for m in media]
    return run.encoder.build(sample, changed).to(run.device)


def easier_prompt(run: Run, g: RolloutGroup, d: Decision) -> PromptInputs | None:
    """A partial reasoning trace as a hint; the trace comes from the best-rewarded completion seen
    for this sample, else from a rollout with the reference answer in view (§3.3)."""
    sample = g.prompt.sample
    trace = run.augment.best_trace(sample.id) or answer_shown_trace(run, g)
    if trace is None:
        return None
    hint = make_hint(trace, d.strength, sample.answer, sample.options, run.cfg.augment.hint_allow_answer)
    if hint is None:  # nothing but the answer in the trace (e.g. answer-only completions)
        return None
    return run.encoder.encode(hint_prompt(sample, hint)).to(run.device)


def answer_shown_trace(run: Run, g: RolloutGroup) -> str | None:
    sample = g.prompt.sample
    if not sample.answer:
        return None
    shown = run.encoder.encode(answer_shown_prompt(sample)).to(run.device)
    probe = rollout_prompts(run, [shown], [TRACE_STREAM + g.stream], "none", [0.0])[0]
    # scored against the original question
    probe = dataclasses.replace(probe, prompt=dataclasses.replace(probe.prompt, sample=sample))
    rewards = score(run, (probe,))[0]  # [G, R]
    weights = torch.tensor(reward_terms(run.cfg).weights, dtype=rewards.dtype)  # [R]
    record_traces(run, sample.id, probe.texts, (rewards.nan_to_num(0.0) * weights).sum(1))  # [G] weighted
    return run.augment.best_trace(sample.id)


def record_traces(run: Run, sample_id: str, texts: tuple[str, ...], totals_: Tensor) -> None:
    """Remember the sample's best completion as a future hint, on the same (weighted) reward scale
    for every source, and only completions reaching `augment.trace_min_reward` (a correct answer):
    a well-formatted wrong answer scores > 0 but must never be handed out as a hint."""
    floor = run.cfg.augment.trace_min_reward
    kept = [float(r) if float(r) >= floor else 0.0 for r in totals_.nan_to_num(0.0).tolist()]  # 0 = not recorded
    run.augment.record(sample_id, list(texts), kept)
