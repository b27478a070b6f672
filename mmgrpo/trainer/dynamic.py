"""A step's sampling round, and DAPO's dynamic sampling (arXiv 2503.14476 §3.2).

    sample_round       rollout (G per prompt; T-GRPO's shuffled G/2 as well), rewards, temporal bonus
    dynamic_sampling   while fewer than prompts_per_step groups have rewards that are not all equal
                       and fewer than dynamic_sampling.max_rounds rounds ran: one more round of
                       prompts_per_step new prompts; then keep the first prompts_per_step
                       informative groups in stream order

A group whose rewards are all equal has zero advantage (no gradient under any objective); DAPO
drops such groups and samples more prompts until the batch is full, so every step trains on a full
batch of informative groups. Deviations: when the round cap is hit the step trains on the
informative groups found, topped up with flat ones in stream order to prompts_per_step (they only
carry their KL term, and nothing when beta = 0), and the short step is counted
(count/dynamic_sampling_short_steps); DAPO's code keeps generating without a cap (verl's raises).
Each round draws a whole prompts_per_step batch, as verl's gen_batch_size = train batch.

Several processes: each round's prompts are sharded as the first round's; which groups are
informative is gathered (a few bools per group), so every process makes the same decisions and runs
the same rounds. Round r's groups have streams r * prompts_per_step + i (their index in the step),
which seed their rollouts: a resumed or resharded run samples and keeps the same groups.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.advantages import compute_advantages
from mmgrpo.trainer.phases import count, next_prompts, rollout, score, timed
from mmgrpo.trainer.records import SampledBatch
from mmgrpo.trainer.reward_terms import reward_terms
from mmgrpo.trainer.setup import Run
from mmgrpo.trainer.temporal import shuffled_rollouts, temporal_bonus


def sample_round(run: Run, prompts: list, timings: dict[str, float]) -> SampledBatch:
    """Roll out and score `prompts` ((stream, sample) pairs of this process)."""
    with timed(timings, "rollout"), dist.full_params(run.accelerator, run.model):  # FSDP / ZeRO-3: gathered
        groups = rollout(run, prompts)
        shuffled = shuffled_rollouts(run, groups)  # T-GRPO: G/2 completions per video on shuffled frames
    with timed(timings, "reward"):
        rewards = score(run, groups)  # [B, G, R]
        rewards, contrasts = temporal_bonus(run, groups, shuffled, rewards)  # [B, G, R]
    return SampledBatch(groups, rewards, contrasts)


def flat(run: Run, rewards: Tensor) -> list[bool]:
    """Per group: are its combined rewards all equal (the advantages' own test)?"""
    if rewards.shape[0] == 0:
        return []
    a = compute_advantages(rewards, reward_terms(run.cfg).weights, run.cfg.advantage.combine, "none",
                           run.cfg.advantage.eps)
    return a.zero_std.tolist()


def dynamic_sampling(run: Run, batch: SampledBatch, timings: dict[str, float]) -> SampledBatch:
    """The step's batch with flat groups replaced by informative groups of further rounds; the
    batch unchanged when dynamic sampling is off."""
    cfg = run.cfg.dynamic_sampling
    if not cfg.enabled:
        return batch
    P = run.cfg.prompts_per_step
    rounds = [batch]
    pool = dist.gather_list(run.accelerator, [(g.stream, not f) for g, f in zip(batch.groups, flat(run, batch.rewards))])
    while sum(ok for _, ok in pool) < P and len(rounds) < cfg.max_rounds:
        offset = len(rounds) * P
        more = sample_round(run, [(offset + i, s) for i, s in next_prompts(run)], timings)
        rounds.append(more)
        pool += dist.gather_list(run.accelerator, [(g.stream, not f) for g, f in zip(more.groups, flat(run, more.rewards))])
    keep = chosen_streams(pool, P)
    informative = sum(ok for _, ok in pool)
    if informative < P:
        count(run, "dynamic_sampling_short_steps", 1 if run.accelerator.is_main_process else 0)
    count(run, "dynamic_sampling_dropped_groups", (len(pool) - len(keep)) if run.accelerator.is_main_process else 0)
    rows = [(g, r, t) for b in rounds for g, r, t in zip(b.groups, b.rewards, b.temporal) if g.stream in keep]
    R = reward_terms(run.cfg).count
    rewards = torch.stack([r for _, r, _ in rows]) if rows else batch.rewards.new_zeros(0, batch.rewards.shape[1], R)
    return SampledBatch(tuple(g for g, _, _ in rows), rewards, tuple(t for _, _, t in rows), rounds=len(rounds),
                        sampled=len(pool), informative=informative)


def chosen_streams(pool: list[tuple[int, bool]], size: int) -> set[int]:
    """The first `size` informative groups by stream; when there are fewer, topped up with the
    first flat ones."""
    ordered = sorted(pool)
    informative = [s for s, ok in ordered if ok][:size]
    filler = [s for s, ok in ordered if not ok][: size - len(informative)]
    return set(informative + filler)


def sampling_metrics(run: Run, batch: SampledBatch) -> dict[str, float]:
    """Dynamic sampling's per-step numbers (already global); empty when it is off."""
    if not run.cfg.dynamic_sampling.enabled:
        return {}
    return {"dynamic/rounds": float(batch.rounds), "dynamic/sampled_groups": float(batch.sampled),
            "dynamic/informative_frac": batch.informative / max(batch.sampled, 1)}
