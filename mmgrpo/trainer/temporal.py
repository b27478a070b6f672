"""T-GRPO's temporal contrast (Video-R1, arXiv 2503.21776, eq. 1).

For every video prompt the rollout also samples G' = G/2 completions on the same clip with its
frames in a random order. With p the ordered group's accuracy and p~ the shuffled group's, when
p >= mu * p~ (mu = temporal.margin, 0.8) each correct ordered completion gets alpha
(temporal.bonus, 0.3); only the ordered group is trained, the shuffled completions are scored
and dropped. The rule rewards a policy whose answers depend on the order of the frames. That is
the rule of Video-R1's released training code; the paper's eq. 1 writes p > p~, which is
temporal.margin=1 temporal.strict=true (the two differ when 0.8 p~ <= p <= p~: the code also
rewards an ordered accuracy up to 20% below the shuffled one).

How it runs: the clip is decoded once (the encoder's frame cache), its frames permuted and the
prompt rebuilt; all shuffled prompts of a round go through one batched rollout call (one prefill,
the vision tower once for the batch), like the ordered ones. Seeds and permutations are functions of
(seed, step, stream), so resumed and multi-process runs shuffle and sample alike.

Deviations, on purpose:
- The bonus is its own reward term (`temporal`, weight 1) rather than added into the accuracy
  column: the total reward is the same (Video-R1 sums its columns) and the per-objective metrics
  show its share. Prompts without a video (or without a reference) have None there.
- p and p~ come from the built-in accuracy reward on the sample's reference, whatever
  reward.functions holds (Video-R1 reads its first reward function, accuracy in its configs); a
  completion is correct when its accuracy exceeds temporal.correct_above (0.1, Video-R1's code).
- p is compared per prompt (per group); Video-R1's code compares the means over a device's
  batch, one prompt there.
- The permutation is never the identity (Video-R1's first release shuffled nothing by mistake);
  a one-frame video cannot be shuffled and its prompt gets no contrast.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mmgrpo.processors.sample import PromptInputs
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.phases import guarded, reward_columns, rollout_prompts
from mmgrpo.trainer.records import RolloutGroup, TemporalContrast
from mmgrpo.trainer.reward_terms import reward_terms
from mmgrpo.trainer.rewards import accuracy
from mmgrpo.trainer.setup import Run

# Seed stream offset of the shuffled rollouts and permutations (DA's offsets are 100_000 to 300_000).
TEMPORAL_STREAM = 400_000


def shuffled_size(run: Run) -> int:
    return run.cfg.temporal.shuffled_generations or run.cfg.generation.num_generations // 2


def frame_order(frames: int, generator: torch.Generator) -> list[int]:
    """A random order of `frames` frames that is never the identity (frames >= 2)."""
    order = torch.randperm(frames, generator=generator).tolist()
    if order == sorted(order):
        order = order[1:] + order[:1]  # a rotation: every frame moves
    return order


def shuffled_prompt(run: Run, g: RolloutGroup) -> tuple[PromptInputs, tuple[tuple[int, ...], ...]] | None:
    """The group's prompt with every video's frames permuted, and the orders; None without a video
    that has two frames or more."""
    sample = g.prompt.sample
    if not any(m.kind == "video" for m in sample.media):
        return None
    gen = torch.Generator().manual_seed(ckpt.step_seed(run.cfg.seed, run.state.step, TEMPORAL_STREAM + g.stream))
    media, orders = [], []
    for m in run.encoder.load_media(sample):  # decoded once: the encoder's frame cache
        if m.kind == "video":
            if m.frames.shape[0] < 2:
                return None
            order = frame_order(int(m.frames.shape[0]), gen)
            orders.append(tuple(order))
            m = dataclasses.replace(m, frames=m.frames[order])  # [T, 3, H, W] in the new order
        media.append(m)
    return run.encoder.build(sample, media).to(run.device), tuple(orders)


def shuffled_rollouts(run: Run, groups: tuple[RolloutGroup, ...]) -> tuple[tuple[RolloutGroup, tuple] | None, ...]:
    """Per group: (G' completions on its shuffled clip, the frame orders), or None. One batched
    rollout for all of them; nothing when temporal.enabled is off."""
    if not run.cfg.temporal.enabled:
        return (None,) * len(groups)
    made = [guarded(run, shuffled_prompt, run, g, counter="skipped_temporal") for g in groups]
    chosen = [(b, m) for b, m in enumerate(made) if m is not None]
    rolled = rollout_prompts(run, [p for _, (p, _) in chosen], [TEMPORAL_STREAM + groups[b].stream for b, _ in chosen],
                             "shuffled", [0.0] * len(chosen), n=shuffled_size(run))
    out: list = [None] * len(groups)
    for (b, (_, orders)), r in zip(chosen, rolled):
        out[b] = (r, orders)
    return tuple(out)


def _accuracy(run: Run, g: RolloutGroup, texts: tuple[str, ...]) -> list[float | None]:
    columns = {k: [v] * len(texts) for k, v in reward_columns(g.prompt.sample).items()}
    return accuracy(list(texts), **columns, numeric_tolerance=run.cfg.reward.numeric_tolerance)


def temporal_bonus(run: Run, groups: tuple[RolloutGroup, ...], shuffled: tuple, rewards: Tensor
                   ) -> tuple[Tensor, tuple[TemporalContrast | None, ...]]:
    """Rewards [B, G, R] with the `temporal` column filled (alpha for correct ordered completions
    of prompts whose ordered accuracy beats margin x the shuffled one, 0 for the others of those
    prompts, None elsewhere), and each group's contrast record."""
    col = reward_terms(run.cfg).temporal
    if col is None:
        return rewards, (None,) * len(groups)
    cfg = run.cfg.temporal
    out, contrasts = rewards.clone(), []
    for b, (g, s) in enumerate(zip(groups, shuffled)):
        ordered = _accuracy(run, g, g.texts) if s is not None else [None]
        if s is None or any(a is None for a in ordered):  # no video, or no reference to grade against
            contrasts.append(None)
            continue
        rolled, orders = s
        p = sum(ordered) / len(ordered)
        p_shuffled = sum(a or 0.0 for a in _accuracy(run, g, rolled.texts)) / rolled.size
        applied = p > cfg.margin * p_shuffled if cfg.strict else p >= cfg.margin * p_shuffled
        bonus = [cfg.bonus if applied and a > cfg.correct_above else 0.0 for a in ordered]
        out[b, :, col] = torch.tensor(bonus, dtype=out.dtype)  # [G]
        contrasts.append(TemporalContrast(g.stream, orders, p, p_shuffled, applied))
    return out, tuple(contrasts)


def temporal_metrics(run: Run, contrasts: tuple[TemporalContrast | None, ...]) -> dict[str, float]:
    """Over the step's contrasted prompts (all processes): how many, mean p and p~, the share that
    got the bonus."""
    if not run.cfg.temporal.enabled:
        return {}
    every = [c for c in dist.gather_list(run.accelerator, [c for c in contrasts if c is not None])]
    n = len(every)
    return {
        "temporal/groups": float(n),
        "temporal/ordered_accuracy": sum(c.ordered_accuracy for c in every) / n if n else float("nan"),
        "temporal/shuffled_accuracy": sum(c.shuffled_accuracy for c in every) / n if n else float("nan"),
        "temporal/bonus_frac": sum(c.applied for c in every) / n if n else float("nan"),
    }
