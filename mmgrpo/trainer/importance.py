"""Rollout / training mismatch: pure functions over tensors.

A rollout engine (vLLM) samples with its own kernels, so the probability it gave a sampled token,
pi_engine, differs slightly from the trainer's pi_old for the same weights (and by whole steps of
training with generation.vllm.sync_every > 1). The loss assumes samples from pi_old; truncated
importance sampling (TIS, as TRL's `vllm_importance_sampling_correction`) reweights each token or
sequence by pi_old / pi_engine, bounded by a cap so that one rare token cannot dominate a step:

    delta_t = logp_old_t - logp_engine_t                    (0 off the mask)
    token modes:    w_t = exp(delta_t)
    sequence modes: w_t = exp(sum_t delta_t)                 (the same for every token of a completion)
    *_truncate:     w = min(w, cap)          *_mask: w = w if w <= cap else 0

Shapes: B groups, G completions, T completion tokens (right-padded; mask 1 on real tokens).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def logp_delta(old_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> Tensor:
    """logp_old - logp_engine per token [B, G, T], exactly 0 where the mask is 0 (padding may hold
    anything, -inf included)."""
    m = mask.bool()  # [B, G, T]
    zero = torch.zeros_like(old_logp)  # [B, G, T]
    return torch.where(m, old_logp, zero) - torch.where(m, engine_logp.to(old_logp.dtype), zero)  # [B, G, T]


def log_ratios(delta: Tensor, mask: Tensor, mode: str) -> Tensor:
    """log(pi_old / pi_engine) [B, G, T] per token (token modes) or per completion, repeated on its
    tokens (sequence modes); 0 off the mask, no gradient."""
    if mode not in MODES or mode == "none":
        raise ValueError(f"unknown importance sampling mode {mode!r}; expected one of {MODES[1:]}")
    m = mask.to(delta.dtype)  # [B, G, T]
    log_w = delta.detach() * m  # [B, G, T]
    if mode.startswith("sequence"):
        log_w = log_w.sum(-1, keepdim=True).expand_as(log_w) * m  # [B, G, T], one value per completion
    return log_w  # [B, G, T]


def importance_weights(delta: Tensor, mask: Tensor, mode: str, cap: float) -> Tensor:
    """Truncated / masked importance weights [B, G, T] (no gradient) from `logp_delta`; 0 off the mask."""
    log_w = log_ratios(delta, mask, mode)  # [B, G, T]
    w = torch.exp(log_w.clamp(max=80.0))  # [B, G, T]; exp(80) is finite in fp32 and far above any cap
    if mode.endswith("truncate"):
        w = w.clamp(max=cap)  # [B, G, T]
    else:
        w = torch.where(w > cap, torch.zeros_like(w), w)  # [B, G, T]
    return w * mask.to(w.dtype)  # [B, G, T]


def mismatch_metrics(delta: Tensor, mask: Tensor, mode: str, cap: float) -> dict[str, Tensor]:
    """|logp_old - logp_engine| over the real tokens (mean and max); with a correction (mode not
    "none") the mean weight and the share of tokens whose ratio exceeded the cap."""
    m = mask.bool()  # [B, G, T]
    abs_delta = delta.detach().abs()[m]  # [n]
    zero = delta.new_zeros(())  # []
    out = {"rollout/logp_delta_mean": abs_delta.mean() if abs_delta.numel() else zero,
           "rollout/logp_delta_max": abs_delta.max() if abs_delta.numel() else zero}
    if mode != "none" and abs_delta.numel():
        out["rollout/is_weight_mean"] = importance_weights(delta, mask, mode, cap)[m].mean()
        out["rollout/is_capped_frac"] = (log_ratios(delta, mask, mode)[m] > math.log(cap)).float().mean()
    return out
