"""Per-step metrics from the step's groups (rewards, advantages, lengths, augmentation).

Metrics describe the whole step: with several processes each one gathers a small record per group
(`GroupStats`) from all processes, in global group order, and computes the same numbers a single
process would (the main process logs them)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.records import ScoredStep
from mmgrpo.trainer.reward_terms import reward_terms
from mmgrpo.trainer.setup import Run


@dataclass
class GroupStats:
    """What the metrics need of a group: small, on the CPU, picklable (gathered across processes)."""

    stream: int  # the group's seed stream: global order
    sample_id: str
    rewards: torch.Tensor  # [G, R] per reward term, NaN = not applicable
    total: torch.Tensor  # [G] combined reward
    advantages: torch.Tensor  # [G]
    parts: torch.Tensor  # [G, R] each reward term's share of the advantage
    lengths: torch.Tensor  # [G] float, completion tokens
    truncated: torch.Tensor  # [G] bool
    prompt_tokens: int
    zero_std: bool
    augmentation: str
    aug_strength: float

    @classmethod
    def of(cls, step: ScoredStep, b: int) -> "GroupStats":
        g = step.groups[b]
        return cls(g.stream, g.sample_id, step.rewards[b].cpu(), step.total[b].cpu(), step.advantages[b].cpu(),
                   step.parts[b].cpu(), g.completion_mask.sum(1).float().cpu(), g.truncated.cpu(), g.prompt.length,
                   bool(step.zero_std[b]), g.augmentation, g.aug_strength)


def gather_stats(run: Run, step: ScoredStep, augmented: bool) -> list[GroupStats]:
    """Stats of the step's original groups (augmented=False) or of DA's copies, all processes."""
    mine = [GroupStats.of(step, b) for b, g in enumerate(step.groups) if (g.augmentation != "none") == augmented]
    stats = dist.gather_list(run.accelerator, mine)
    return stats if run.accelerator.num_processes == 1 else sorted(stats, key=lambda s: s.stream)


def reward_metrics(run: Run, groups: list[GroupStats]) -> dict[str, float]:
    if not groups:
        return {"reward/mean": float("nan"), "reward/std": float("nan")}
    rewards = torch.cat([g.rewards for g in groups])  # [N, R]
    total = torch.cat([g.total for g in groups])  # [N]
    out = {"reward/mean": float(total.nanmean()), "reward/std": float(total[~total.isnan()].std(unbiased=False))}
    for k, name in enumerate(reward_terms(run.cfg).names):
        col = rewards[:, k][~rewards[:, k].isnan()]  # [n_applicable]
        out[f"reward/{name}/mean"] = float(col.mean()) if len(col) else float("nan")
        out[f"reward/{name}/std"] = float(col.std(unbiased=False)) if len(col) else float("nan")
    if "accuracy" in run.cfg.reward.functions:
        out["accuracy"] = out["reward/accuracy/mean"]
    return out


def objective_metrics(run: Run, groups: list[GroupStats]) -> dict[str, float]:
    """Which reward drives learning: per term, the mean |advantage share| over the step's
    completions and its share of all terms' (sum_i |A_ik| / sum_ik |A_ik|, 0 when nothing moves)."""
    if not groups:
        return {}
    parts = torch.cat([g.parts for g in groups]).abs()  # [N, R]
    whole = float(parts.sum())
    out = {}
    for k, name in enumerate(reward_terms(run.cfg).names):
        out[f"advantage/{name}/abs_mean"] = float(parts[:, k].mean())
        out[f"advantage/{name}/share"] = float(parts[:, k].sum()) / whole if whole > 0 else 0.0
    return out


def zero_std_after(groups: list[GroupStats], extra: list[GroupStats]) -> float:
    """Zero-std share once each augmented original is replaced by its augmented copy."""
    replaced = {g.sample_id: g for g in extra}
    final = [replaced.get(g.sample_id, g) for g in groups]
    return sum(g.zero_std for g in final) / max(1, len(final))


def step_metrics(run: Run, step: ScoredStep, stats: dict[str, float], timings: dict[str, float],
                 seconds: float) -> dict:
    """`stats` (from policy_update) are already global; everything else is gathered here. Phase
    times are this process's (the main process logs them)."""
    groups, extra = gather_stats(run, step, augmented=False), gather_stats(run, step, augmented=True)
    everything = groups + extra
    adv = torch.cat([g.advantages for g in everything]) if everything else torch.zeros(1)  # [N]
    lengths = torch.cat([g.lengths for g in everything]) if everything else torch.zeros(1)  # [N]
    tokens = sum(g.prompt_tokens for g in everything) + float(lengths.sum())
    out = {
        **reward_metrics(run, groups),  # the original questions only: augmented inputs are easier/harder
        **stats,
        "advantage/mean": float(adv.mean()),
        "advantage/std": float(adv.std(unbiased=False)),
        "advantage/abs_mean": float(adv.abs().mean()),
        **objective_metrics(run, everything),
        "completion/length_mean": float(lengths.mean()),
        "completion/truncated_frac": float(torch.cat([g.truncated.float() for g in everything]).mean())
        if everything else 0.0,
        "zero_std_frac": sum(g.zero_std for g in groups) / max(1, len(groups)),
        "step_time": seconds,
        **{f"time/{k}": v for k, v in sorted(timings.items())},
        "tokens_per_s": tokens / max(seconds, 1e-9),  # all processes together
        "epoch": float(run.state.epoch),
    }
    if run.augment is not None:
        out["augment/zero_std_frac_after"] = zero_std_after(groups, extra)
        out["augment/harder"] = float(sum(g.augmentation == "harder" for g in extra))
        out["augment/easier"] = float(sum(g.augmentation == "easier" for g in extra))
        out["augment/mean_strength"] = sum(g.aug_strength for g in extra) / max(1, len(extra))
        if extra:
            out["augment/reward_mean"] = reward_metrics(run, extra)["reward/mean"]
    for k, v in dist.sum_counters(run.accelerator, run.state.counters).items():
        out[f"count/{k}"] = float(v)
    return out
