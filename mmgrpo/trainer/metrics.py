"""Per-step metrics from the step's groups (rewards, advantages, lengths, augmentation)."""
from __future__ import annotations

import torch

from mmgrpo.trainer.batch import Group
from mmgrpo.trainer.setup import Run


def _name(spec: str) -> str:
    """A short metric name for a reward function ('path/file.py:fn' -> 'fn')."""
    return spec.rsplit(":", 1)[-1]


def reward_metrics(run: Run, groups: list[Group]) -> dict[str, float]:
    if not groups:
        return {"reward/mean": float("nan"), "reward/std": float("nan")}
    rewards = torch.cat([g.rewards for g in groups])  # [N, R]
    total = torch.cat([g.total_reward for g in groups])  # [N]
    out = {"reward/mean": float(total.nanmean()), "reward/std": float(total[~total.isnan()].std(unbiased=False))}
    for k, spec in enumerate(run.cfg.reward.functions):
        col = rewards[:, k][~rewards[:, k].isnan()]  # [n_applicable]
        out[f"reward/{_name(spec)}/mean"] = float(col.mean()) if len(col) else float("nan")
        out[f"reward/{_name(spec)}/std"] = float(col.std(unbiased=False)) if len(col) else float("nan")
    if "accuracy" in run.cfg.reward.functions:
        out["accuracy"] = out["reward/accuracy/mean"]
    return out


def zero_std_after(groups: list[Group], extra: list[Group]) -> float:
    """Zero-std share once each augmented original is replaced by its augmented copy."""
    replaced = {g.sample_id: g for g in extra}
    final = [replaced.get(g.sample_id, g) for g in groups]
    return sum(g.zero_std for g in final) / max(1, len(final))


def step_metrics(run: Run, groups: list[Group], extra: list[Group], stats: dict[str, float], seconds: float) -> dict:
    everything = groups + extra
    adv = torch.cat([g.advantages for g in everything]) if everything else torch.zeros(1)  # [N]
    lengths = torch.cat([g.completion_mask.sum(1).float() for g in everything]) if everything else torch.zeros(1)
    prompt_tokens = sum(g.prompt.length for g in everything)
    tokens = prompt_tokens + float(lengths.sum())
    out = {
        **reward_metrics(run, everything),
        **stats,
        "advantage/mean": float(adv.mean()),
        "advantage/std": float(adv.std(unbiased=False)),
        "advantage/abs_mean": float(adv.abs().mean()),
        "completion/length_mean": float(lengths.mean()),
        "completion/truncated_frac": float(torch.cat([g.truncated.float() for g in everything]).mean())
        if everything else 0.0,
        "zero_std_frac": sum(g.zero_std for g in groups) / max(1, len(groups)),
        "step_time": seconds,
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "epoch": float(run.state.epoch),
    }
    if run.augment is not None:
        out["augment/zero_std_frac_after"] = zero_std_after(groups, extra)
        out["augment/harder"] = float(sum(g.augmentation == "harder" for g in extra))
        out["augment/easier"] = float(sum(g.augmentation == "easier" for g in extra))
        out["augment/mean_strength"] = sum(g.aug_strength for g in extra) / max(1, len(extra))
    for k, v in run.state.counters.items():
        out[f"count/{k}"] = float(v)
    return out
