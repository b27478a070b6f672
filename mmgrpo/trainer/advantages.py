"""Group advantages from per-function rewards (DeepSeekMath §4.1.2; Dr. GRPO §3.2; GDPO for several rewards).

Pure functions over tensors; nothing here knows about models or trainers. Shapes:
B groups (prompts), G completions per group, R reward functions. A reward of NaN means the
function returned None for that completion ("not applicable"); the reward runner refuses real
NaN values, so inside this module NaN in `rewards` always means None.

Standard deviations are population (1/G) ones, for the advantage and for Reg-GRPO's z-score of
the log-ratios alike: Reg-GRPO (DeepVideo-R1 §3.2) regresses one z-score onto the other, and
its optimum is only representable when both use the same definition. TRL uses Bessel's
(1/(G-1)) std, which scales every advantage by sqrt((G-1)/G) (0.935 for G = 8) and nothing else.

All the math is float64, whatever dtype the rewards come in: a float32 variance overflows for
rewards of about 1e19 and beyond (1e38 is a valid float32, its square is not), which makes the
std inf and silently zeroes every advantage. The loss casts the advantages to its own dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

CombineMode = Literal["sum_then_normalize", "normalize_then_sum"]
Scale = Literal["group", "batch", "none"]

# Totals whose spread within a group is below this (relative to their magnitude) count as
# "all equal": the imputed None entries below are means and may differ from the others by
# rounding only.
_EQUAL_RTOL = 1e-6

# The largest |reward| accepted. The variance squares deviations of the combined reward, which
# are up to 2 * sum_k |w_k| * max |r|, and sums G of them: float64 holds 1.8e308, so deviations
# must stay well under 1e154. 1e100 leaves 50 orders of magnitude for weights, R and G, and no
# meaningful reward comes near it; the reward runner refuses larger values naming the sample.
MAX_ABS_REWARD = 1e100
# The same bound for the combined reward (weights included): (2 * 1e150)^2 * G < 1.8e308 for
# any G below 4e7.
_MAX_ABS_TOTAL = 1e150


@dataclass
class Advantages:
    advantages: Tensor  # [B, G] float64, no grad
    zero_std: Tensor  # [B] bool, groups whose totals are all equal (no learning signal)
    total: Tensor  # [B, G] float64 combined reward the advantages were computed from (NaN = unscorable)
    scorable: Tensor  # [B, G] bool, completions with at least one applicable reward
    parts: Tensor  # [B, G, R] float64, each reward's share of the advantage: parts.sum(-1) == advantages


def _check_representable(x: Tensor, allowed_nan: Tensor, what: str, bound: float) -> None:
    """ValueError naming the first group (and completion) holding an inf, a NaN not allowed, or a
    magnitude over `bound` (its square would overflow the variance, see MAX_ABS_REWARD)."""
    bad = (x.abs() > bound) | (torch.isnan(x) & ~allowed_nan)  # same shape as x (inf > bound)
    if bool(bad.any()):
        idx = [int(i) for i in bad.nonzero()[0]]
        value = float(x[tuple(idx)])
        why = "not finite" if not math.isfinite(value) else f"beyond +-{bound:g}, too large for its variance"
        raise ValueError(
            f"{what} at group {idx[0]} (completion {idx[1]}) is {value:g}: {why}; "
            f"a reward must be a finite number of magnitude <= {MAX_ABS_REWARD:g}, or None"
        )


def _nan_mean(x: Tensor, dim: int) -> Tensor:
    """Mean over `dim` ignoring NaN; 0 where every entry is NaN (keepdim)."""
    valid = ~torch.isnan(x)  # same shape as x
    count = valid.sum(dim, keepdim=True)  # x with `dim` of size 1
    total = torch.where(valid, x, torch.zeros_like(x)).sum(dim, keepdim=True)  # x with `dim` of size 1
    return total / count.clamp(min=1)  # x with `dim` of size 1


def _nan_std(x: Tensor, dim: int | None) -> Tensor:
    """Population std ignoring NaN (keepdim; all dims when dim is None); 0 where nothing is valid."""
    if dim is None:
        return _nan_std(x.reshape(1, -1), 1).reshape([1] * x.dim())  # [1, ...] like x
    mean = _nan_mean(x, dim)  # x with `dim` of size 1
    return _nan_mean((x - mean) ** 2, dim).sqrt()  # x with `dim` of size 1


def combine_rewards(
    rewards: Tensor,  # [B, G, R] float, NaN = None
    weights: Sequence[float] | Tensor,  # [R]
    mode: CombineMode,
    eps: float = 1e-4,
    std_normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """One number per completion from R rewards. Returns (total [B, G], scorable [B, G] bool).

    sum_then_normalize: weighted sum; the group normalisation happens in `group_advantages`.
      A reward that returns None for a sample is left out of that sample's
      baseline. The baseline of completion i is then sum over *its* applicable functions k of
      w_k * mean_{j: k applies to j} r_jk, so its centred total is
      sum_{k applicable to i} w_k (r_ik - mean_j r_jk). We get exactly that by filling each None
      with the group mean of that function (it contributes r - mean = 0 to the advantage) and
      centring the sum as usual. Merely counting None as 0 would instead punish a completion for
      a reward that does not apply to it. A completion with no applicable reward at all is
      "unscorable": its total is NaN, it stays out of the group mean and std, advantage 0 (as TRL).
    normalize_then_sum (GDPO): each function is normalised within its group over the completions
      it applies to (None -> 0 after normalisation), summed with weights, then normalised over
      the whole batch. The result is already an advantage; pass it on with scale "none".
    """
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be [B, G, R], got shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float64)  # [B, G, R] (see the module docstring)
    w = torch.as_tensor(weights, dtype=torch.float64, device=rewards.device)  # [R]
    if w.shape != rewards.shape[2:] or not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be {rewards.shape[2]} finite numbers, got {w.tolist()}")
    none = torch.isnan(rewards)  # [B, G, R]
    _check_representable(rewards, none, "reward", MAX_ABS_REWARD)
    scorable = ~none.all(-1)  # [B, G]
    mean_k = _nan_mean(rewards, 1)  # [B, 1, R] per-function group mean over applicable entries
    if mode == "sum_then_normalize":
        filled = torch.where(none, mean_k.expand_as(rewards), rewards)  # [B, G, R]
        total = (filled * w).sum(-1)  # [B, G]
        return torch.where(scorable, total, torch.full_like(total, float("nan"))), scorable
    if mode == "normalize_then_sum":
        centred = rewards - mean_k  # [B, G, R], NaN where None
        if std_normalize:
            centred = centred / (_nan_std(rewards, 1) + eps)  # [B, G, R]
        per_fn = torch.where(none, torch.zeros_like(centred), centred)  # [B, G, R]
        summed = (per_fn * w).sum(-1)  # [B, G]
        summed = torch.where(scorable, summed, torch.full_like(summed, float("nan")))  # [B, G]
        _check_representable(summed, ~scorable, "combined reward", _MAX_ABS_TOTAL)  # huge weights
        batch_mean = _nan_mean(summed.reshape(1, -1), 1)  # [1, 1] (0 up to rounding: groups are centred)
        out = summed - batch_mean  # [B, G]
        if std_normalize:
            out = out / (_nan_std(summed, None) + eps)  # [B, G]
        return out, scorable
    raise ValueError(f"unknown reward combination {mode!r}; use sum_then_normalize or normalize_then_sum")


def group_advantages(
    total: Tensor,  # [B, G] float (computed in float64)
    scale: Scale,
    eps: float,
    center: bool = True,
    std_normalize: bool = True,
    scorable: Tensor | None = None,  # [B, G] bool; NaN totals are allowed only where False
) -> tuple[Tensor, Tensor]:
    """Advantage of each completion (same for all its tokens). Returns (advantages [B, G], zero_std [B]).

    scale "group": (R - mean_g R) / (std_g R + eps)   GRPO, DeepSeekMath §4.1.2
    scale "batch": (R - mean_g R) / (std_batch R + eps)  group baseline, batch std (TRL "batch")
    scale "none" or std_normalize=False: R - mean_g R   Dr. GRPO §3.2 (the std division biases
      towards too-easy / too-hard questions)
    Groups whose totals are all equal get advantage exactly 0 and are flagged in `zero_std`
    (Reg-GRPO skips them, DAPO's dynamic sampling replaces them). Unscorable completions get 0.
    """
    if total.dim() != 2:
        raise ValueError(f"total must be [B, G], got shape {tuple(total.shape)}")
    total = total.to(torch.float64)  # [B, G] (see the module docstring)
    ok_nan = torch.zeros_like(total, dtype=torch.bool) if scorable is None else ~scorable  # [B, G]
    _check_representable(total, ok_nan, "combined reward", _MAX_ABS_TOTAL)
    valid = ~torch.isnan(total)  # [B, G]
    hi = torch.where(valid, total, torch.full_like(total, -float("inf"))).amax(1)  # [B]
    lo = torch.where(valid, total, torch.full_like(total, float("inf"))).amin(1)  # [B]
    spread = torch.where(valid.any(1), hi - lo, torch.zeros_like(hi))  # [B]
    magnitude = torch.where(valid.any(1), torch.maximum(hi.abs(), lo.abs()), torch.zeros_like(hi))  # [B]
    zero_std = spread <= _EQUAL_RTOL * (1.0 + magnitude)  # [B]
    adv = total - _nan_mean(total, 1) if center else total  # [B, G]
    if std_normalize and scale != "none":
        if scale == "group":
            std = _nan_std(total, 1)  # [B, 1]
        elif scale == "batch":
            std = _nan_std(total, None)  # [1, 1]
        else:
            raise ValueError(f"unknown advantage scale {scale!r}; use group, batch or none")
        adv = adv / (std + eps)  # [B, G]
    adv = torch.where(valid & ~zero_std[:, None], adv, torch.zeros_like(adv))  # [B, G]
    return adv.detach(), zero_std


def objective_parts(
    rewards: Tensor,  # [B, G, R] float, NaN = None
    weights: Sequence[float] | Tensor,  # [R]
    combine: CombineMode,
    scale: Scale,
    eps: float,
    total: Tensor,  # [B, G] from combine_rewards
    zero_std: Tensor,  # [B] bool
    scorable: Tensor,  # [B, G] bool
) -> Tensor:
    """Each reward function's share of every advantage, [B, G, R], summing over R to the advantage
    (both combinations are linear in the per-function terms once their scales are fixed):

    sum_then_normalize: w_k (r_ik - mean_g r_k) / (std + eps), a None entry contributing 0 (it was
      filled with its group mean), std the group's (or the batch's) std of the totals;
    normalize_then_sum: w_k n_ik / (std_batch + eps), n_ik the function's own group-normalised
      reward (0 for None); the batch mean subtracted by GDPO is 0 up to rounding (groups are
      centred) and is left out.
    Zero for flat groups and unscorable completions, as their advantages are.
    """
    rewards = rewards.to(torch.float64)  # [B, G, R]
    w = torch.as_tensor(weights, dtype=torch.float64, device=rewards.device)  # [R]
    none = torch.isnan(rewards)  # [B, G, R]
    centred = rewards - _nan_mean(rewards, 1)  # [B, G, R], NaN where None
    normalise = scale != "none"
    if combine == "sum_then_normalize":
        parts = torch.where(none, torch.zeros_like(centred), centred) * w  # [B, G, R]
        if normalise:
            std = _nan_std(total, 1 if scale == "group" else None)  # [B, 1] or [1, 1]
            parts = parts / (std[..., None] + eps)  # [B, G, R]
    else:
        if normalise:
            centred = centred / (_nan_std(rewards, 1) + eps)  # [B, G, R]
        parts = torch.where(none, torch.zeros_like(centred), centred) * w  # [B, G, R]
        if normalise:
            summed = torch.where(scorable, parts.sum(-1), torch.full_like(total, float("nan")))  # [B, G]
            parts = parts / (_nan_std(summed, None)[..., None] + eps)  # [B, G, R]
    keep = (scorable & ~zero_std[:, None])[..., None]  # [B, G, 1]
    return torch.where(keep, parts, torch.zeros_like(parts)).detach()  # [B, G, R]


def compute_advantages(
    rewards: Tensor,  # [B, G, R] float, NaN = None
    weights: Sequence[float] | Tensor,  # [R]
    combine: CombineMode,
    scale: Scale,
    eps: float,
) -> Advantages:
    """What the trainer calls: `combine_rewards` then `group_advantages` with matching settings.

    GDPO's output is already normalised over the batch, so it is not normalised again per group.
    """
    std_normalize = scale != "none"
    total, scorable = combine_rewards(rewards, weights, combine, eps=eps, std_normalize=std_normalize)  # [B, G] x2
    if combine == "normalize_then_sum":
        adv, zero_std = group_advantages(total, "none", eps, center=False, scorable=scorable)  # [B, G], [B]
    else:
        adv, zero_std = group_advantages(  # [B, G], [B]
            total, scale, eps, std_normalize=std_normalize, scorable=scorable
        )
    parts = objective_parts(rewards, weights, combine, scale, eps, total, zero_std, scorable)  # [B, G, R]
    return Advantages(advantages=adv, zero_std=zero_std, total=total, scorable=scorable, parts=parts)
