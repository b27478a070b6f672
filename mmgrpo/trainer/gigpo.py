"""GiGPO (Feng et al., "Group-in-Group Policy Optimization for LLM Agent Training", arXiv
2505.10978): step-level credit for multi-turn trajectories, pure functions over tensors.

Shapes: N trajectories of one group (the G completions of a prompt), T turns (steps), right-padded
(`step_mask` = 1 on real steps).

- Episode advantage (§3.1, eq. 3): A_E(tau_i) = (R_i - mean_j R_j) / F(R), F = std (or 1).
- Anchor states (§3.2): the steps whose observation (here: the whole context before the turn,
  prompt and tool answers included) is identical across the group's trajectories form a step
  group; every trajectory's first turn sees the prompt, so turn 0 is always one step group of N.
- Step advantage (eq. 6-7): within a step group, A_S = (R_t - mean R_t) / F over the group, where
  R_t = sum_{k >= t} gamma^(k - t) r_k is the discounted return from that step. A step seen only
  once gets A_S = 0 (a group of one has nothing to compare with).
- Combined (eq. 8): A(a_t) = A_E(tau) + omega * A_S(a_t), with gamma = 0.95, omega = 1 in the paper.
"""
from __future__ import annotations

from typing import Hashable, Literal

import torch
from torch import Tensor

Scale = Literal["std", "none"]


def discounted_returns(step_rewards: Tensor, step_mask: Tensor, gamma: float) -> Tensor:
    """R_t = r_t + gamma * R_{t+1} over real steps: [N, T] -> [N, T] (0 on padding)."""
    r = step_rewards * step_mask  # [N, T]
    out = torch.zeros_like(r)  # [N, T]
    running = torch.zeros_like(r[:, 0])  # [N]
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running * step_mask[:, t]  # [N]; padding (at the end) stays 0
        out[:, t] = running
    return out * step_mask  # [N, T]


def normalized(values: Tensor, scale: Scale, eps: float) -> Tensor:
    """(v - mean) / (std + eps) (unbiased std, as GRPO) or v - mean for a 1-D group [n] -> [n]."""
    centred = values - values.mean()  # [n]
    if scale == "none" or values.numel() < 2:
        return centred
    return centred / (values.std() + eps)  # [n]


def anchor_groups(states: list[list[Hashable]]) -> Tensor:
    """Step-group id per step: identical states (here token-id tuples of the context before a turn)
    share an id; [N, T] long, -1 on padding (trajectories with fewer turns)."""
    T = max((len(s) for s in states), default=0)
    ids: dict[Hashable, int] = {}
    out = torch.full((len(states), T), -1, dtype=torch.long)  # [N, T]
    for i, row in enumerate(states):
        for t, state in enumerate(row):
            out[i, t] = ids.setdefault(state, len(ids))
    return out


def step_advantages(returns: Tensor, groups: Tensor, scale: Scale, eps: float) -> Tensor:
    """A_S per step [N, T]: each step's return normalised within its anchor step group (`groups`
    [N, T] from `anchor_groups`, -1 = padding, which gets 0)."""
    out = torch.zeros_like(returns)  # [N, T]
    for gid in groups.unique().tolist():
        if gid < 0:
            continue
        at = groups == gid  # [N, T] bool
        out[at] = normalized(returns[at], scale, eps)  # [n_group]
    return out


def gigpo_advantages(episode_rewards: Tensor, step_rewards: Tensor, step_mask: Tensor, groups: Tensor,
                     gamma: float, omega: float, scale: Scale, eps: float) -> Tensor:
    """A(a_t) = A_E + omega * A_S for every step of a group's N trajectories: [N, T] (0 on padding).
    `episode_rewards` [N]; `step_rewards` [N, T] (with one final reward: R at the last turn)."""
    episode = normalized(episode_rewards, scale, eps)  # [N]
    step = step_advantages(discounted_returns(step_rewards, step_mask, gamma), groups, scale, eps)  # [N, T]
    return (episode.view(-1, 1) + omega * step) * step_mask  # [N, T]


def final_reward_steps(rewards: Tensor, num_turns: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """Sparse step rewards from one reward per trajectory: (step_rewards [N, T] with R_i at turn
    num_turns[i] - 1, step_mask [N, T]) for `rewards` [N] and `num_turns` [N] long."""
    cols = torch.arange(T).view(1, -1)  # [1, T]
    mask = (cols < num_turns.view(-1, 1)).to(rewards.dtype)  # [N, T]
    last = cols == (num_turns.view(-1, 1) - 1)  # [N, T] bool
    return rewards.view(-1, 1) * last.to(rewards.dtype), mask  # [N, T], [N, T]


def token_advantages(step_adv: Tensor, turn_of_token: Tensor) -> Tensor:
    """Each token gets its turn's advantage: step_adv [N, T], turn_of_token [N, C] long (-1 on tool
    and padding tokens, which get 0) -> [N, C]."""
    picked = step_adv.gather(1, turn_of_token.clamp(min=0))  # [N, C]
    return picked * (turn_of_token >= 0).to(step_adv.dtype)  # [N, C]
