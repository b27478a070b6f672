"""The columns of a step's reward tensor [B, G, R] and their weights, in one place.

    reward.functions        the user's functions: built-ins, `file.py:function`, `module:function`, `judge` (judge.py)
    overlong                DAPO's soft overlong punishment (§3.4), when reward.overlong_penalty > 0
    temporal                T-GRPO's temporal bonus (Video-R1 eq. 1), when temporal.enabled: not a
                            function of the completions alone; the temporal phase fills the column

Every phase that reads rewards (advantages, the difficulty scheduler's totals, metrics) takes names
and weights from here, so a method that adds a term is one entry, not an edit of each phase.
"""
from __future__ import annotations

from dataclasses import dataclass

from mmgrpo.config import TrainConfig

OVERLONG = "overlong"
TEMPORAL = "temporal"


@dataclass(frozen=True)
class RewardTerms:
    specs: tuple[str, ...]  # [R_fn] what the reward runner calls, the first R_fn columns
    names: tuple[str, ...]  # [R] short names for metrics
    weights: tuple[float, ...]  # [R]
    temporal: int | None  # column of T-GRPO's bonus, None when off

    @property
    def count(self) -> int:
        return len(self.weights)


def short_name(spec: str) -> str:
    """A metric name for a reward function ('path/file.py:fn' -> 'fn')."""
    return spec.rsplit(":", 1)[-1]


def reward_terms(cfg: TrainConfig) -> RewardTerms:
    specs, weights = list(cfg.reward.functions), list(cfg.reward.weights)
    if cfg.reward.overlong_penalty > 0:
        specs.append(OVERLONG)
        weights.append(cfg.reward.overlong_penalty)
    names = [short_name(s) for s in specs]
    temporal = None
    if cfg.temporal.enabled:
        temporal = len(names)
        names.append(TEMPORAL)
        weights.append(1.0)  # the bonus is already in reward units (Video-R1 adds alpha to the reward)
    return RewardTerms(tuple(specs), tuple(names), tuple(float(w) for w in weights), temporal)


def reward_functions(cfg: TrainConfig, device=None) -> list:
    """What the reward runner calls for `reward_terms(cfg).specs`: `judge` built from the judge
    section (a local judge model is loaded here, once), every other spec as is (the runner loads it)."""
    out: list = []
    for spec in reward_terms(cfg).specs:
        if spec == "judge":
            from mmgrpo.trainer.judge import make_judge

            out.append(make_judge(cfg.reward.judge, device=device))
        else:
            out.append(spec)
    return out
