"""The step's data: frozen records, each returned by the phase that makes it and never changed.

    rollout     -> RolloutGroup per prompt       (a prompt and its G completions; T-GRPO's shuffled ones)
    score       -> rewards [B, G, R]             (one column per reward term)
    temporal    -> TemporalContrast per video    (T-GRPO's bonus column filled)
    dynamic     -> SampledBatch                  (DAPO: flat groups replaced by new ones)
    augment     -> more RolloutGroups + rewards  (DA's harder / easier copies)
    advantages  -> ScoredStep                    (rewards, totals, advantages, zero-std flags, once)
    update      -> statistics

Keeping the prompt once per group (not repeated G times) is what lets the rollout and the training
forward encode each prompt once, and lets a distributed run keep groups whole on one process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmgrpo.models.layout import CompletionMedia
from mmgrpo.models.multiturn import Trajectory
from mmgrpo.processors.sample import PromptInputs


@dataclass(frozen=True)
class ToolRollout:
    """The multi-turn side of a group (tools.enabled): what its G completions hold beyond text tokens."""

    media: CompletionMedia  # tool images inside the completions, for every log-prob forward
    trajectories: tuple[Trajectory, ...]  # [G] turns, tool answers, how each ended


@dataclass(frozen=True)
class RolloutGroup:
    prompt: PromptInputs  # the prompt, batch dim 1, with its vision inputs
    completion_ids: Tensor  # [G, C] long, right-padded
    completion_mask: Tensor  # [G, C] 1 on completion tokens up to and including EOS; with tools, on model tokens only
    truncated: Tensor  # [G] bool, no EOS within max_new_tokens
    texts: tuple[str, ...]  # G decoded completions
    stream: int  # seed stream: the group's index in the step's global batch (+ an offset for DA copies)
    augmentation: str  # "none" | "harder" | "easier": where this group came from (DeepVideo-R1 §3.3)
    aug_strength: float  # strength of that augmentation, 0 for originals
    # [G, C] the rollout engine's log-probs of the sampled tokens (vLLM); None = sampled by the
    # trainer's own model (HF backend), nothing to compare
    engine_logp: Tensor | None = None
    tools: ToolRollout | None = None  # multi-turn rollouts with tools (trainer/tool_rollout.py); None = single turn

    @property
    def size(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def sample_id(self) -> str:
        return self.prompt.sample.id


@dataclass(frozen=True)
class TemporalContrast:
    """T-GRPO's comparison for one video prompt (Video-R1 eq. 1): its ordered group against G/2
    completions on the same clip with the frames shuffled (trainer/temporal.py)."""

    stream: int  # the ordered group's stream
    order: tuple[tuple[int, ...], ...]  # per video of the prompt, the frame order shown (a non-identity permutation)
    ordered_accuracy: float  # p: mean accuracy of the ordered completions
    shuffled_accuracy: float  # p~: mean accuracy of the shuffled completions
    applied: bool  # p >= margin * p~: the correct ordered completions got the bonus


@dataclass(frozen=True)
class SampledBatch:
    """A step's groups rolled out and scored, before augmentation: one round (dynamic.sample_round)
    or several when DAPO's dynamic sampling refilled flat groups (dynamic.dynamic_sampling)."""

    groups: tuple[RolloutGroup, ...]  # this process's groups, by stream
    rewards: Tensor  # [B, G, R] one column per reward term (reward_terms.py)
    temporal: tuple[TemporalContrast | None, ...]  # [B] T-GRPO's contrast per group, None without one
    rounds: int = 1  # rollout rounds of the step
    sampled: int = 0  # groups rolled out in all rounds, all processes (dynamic sampling only)
    informative: int = 0  # of those, groups whose rewards are not all equal


@dataclass(frozen=True)
class ScoredStep:
    """Everything the update needs of a step, computed once over the final batch (originals and DA
    copies): with several processes the advantage statistics are the global batch's, the tensors
    hold this process's groups."""

    groups: tuple[RolloutGroup, ...]  # B local groups: the step's prompts, then DA copies
    rewards: Tensor  # [B, G, R] per reward function, NaN = not applicable
    total: Tensor  # [B, G] combined reward (weighted sum, None entries at the group mean)
    advantages: Tensor  # [B, G] no grad
    zero_std: Tensor  # [B] bool, all G rewards equal: no learning signal
    parts: Tensor  # [B, G, R] each reward term's share of the advantage (sums over R to `advantages`)
    token_advantages: tuple[Tensor, ...] | None = None  # B x [G, C_b] per token (GiGPO); None = `advantages` per completion

    @property
    def originals(self) -> tuple[RolloutGroup, ...]:
        return tuple(g for g in self.groups if g.augmentation == "none")


def pad_stack(rows: list[Tensor], length: int, value: float) -> Tensor:
    """[G, C_b] tensors of different C_b -> [B, G, length], padded on the right with `value`."""
    out = []
    for r in rows:  # r: [G, C_b]
        pad = torch.full((r.shape[0], length - r.shape[1]), value, dtype=r.dtype, device=r.device)  # [G, L-C_b]
        out.append(torch.cat([r, pad], dim=1))  # [G, L]
    return torch.stack(out)  # [B, G, L]
