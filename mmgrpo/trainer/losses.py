"""Policy losses of the GRPO family: pure functions over tensors.

Every objective has the signature `fn(x: LossInputs, cfg: LossConfig, norm: Normalizer) -> LossOutput`
and is picked from the literal dict `OBJECTIVES` by `loss.objective`; the trainer never branches on
a name. The objective (what is computed per token / sequence / group), the token aggregation
(`cfg.aggregation`, one `aggregate` function) and the advantage scaling (trainer/advantages.py) are
separate settings; paper names are presets of them (mmgrpo.config.PRESETS).

Shapes: B groups, G completions per group, T completion tokens (right-padded, `mask` = 1 on real
completion tokens).

Gradient accumulation and DDP: every denominator comes from `norm`, which holds counts for the
*whole optimizer step* (all micro-batches, all processes). Each micro-batch's `loss` is then its
exact share of the full-batch loss: summing the micro-batch losses (accumulating gradients) gives
the full-batch loss and gradient. DDP *averages* gradients over processes, so a trainer using a
global `norm` across P processes multiplies each loss by P (or all-reduces with SUM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from mmgrpo.config import LossConfig


@dataclass
class LossInputs:
    logp: Tensor  # [B, G, T] policy token log-probs (requires grad)
    old_logp: Tensor  # [B, G, T] behaviour policy (detached); == logp.detach() when on-policy
    ref_logp: Tensor | None  # [B, G, T] reference (None when beta == 0)
    advantages: Tensor  # [B, G] group advantages (no grad); [B, G, T] per token (GiGPO, clipped_token only)
    mask: Tensor  # [B, G, T] 1 on completion tokens
    zero_std: Tensor  # [B] bool, groups with identical rewards
    # [B, G, T] truncated importance weights pi_old / pi_engine (trainer/importance.py, no grad) when a
    # rollout engine sampled; None = the trainer's own weights sampled (HF backend) or correction off
    is_weight: Tensor | None = None


@dataclass
class Normalizer:
    """Denominators for the whole optimizer step (all micro-batches, all processes).

    tokens: completion tokens (mask sum); sequences: completions (B * G, empty ones included);
    groups: groups that *contribute* to Reg-GRPO, i.e. those with zero_std False;
    max_completion_len: the generation budget (Dr. GRPO's constant).
    The losses treat a count below 1 as 1: a step with no tokens / no contributing group then has
    loss 0 (its numerator is 0) instead of 0/0 = NaN.
    """

    tokens: float
    sequences: float
    groups: float
    max_completion_len: int

    @classmethod
    def local(cls, x: LossInputs, max_completion_len: int) -> "Normalizer":
        """Counts of this batch alone (no accumulation, one process). Zero counts become 1 so that an
        all-masked batch gives loss 0 rather than 0/0."""
        return cls(
            tokens=max(float(x.mask.sum()), 1.0),
            sequences=float(x.mask.shape[0] * x.mask.shape[1]),
            groups=max(float((~x.zero_std.bool()).sum()), 1.0),
            max_completion_len=int(max_completion_len),
        )

    @classmethod
    def combine(cls, parts: Iterable["Normalizer"]) -> "Normalizer":
        """Sum the counts of micro-batches (or processes) into one step-level Normalizer.

        Build each part with `local` first: its 1-clamps only matter for empty parts, so combine raw
        counts via `from_counts` when a part may be entirely empty."""
        parts = list(parts)
        lens = {p.max_completion_len for p in parts}
        if len(lens) != 1:
            raise ValueError(f"micro-batches disagree on max_completion_len: {sorted(lens)}")
        return cls(
            tokens=sum(p.tokens for p in parts),
            sequences=sum(p.sequences for p in parts),
            groups=sum(p.groups for p in parts),
            max_completion_len=lens.pop(),
        )

    @classmethod
    def from_counts(cls, masks: Iterable[Tensor], zero_stds: Iterable[Tensor], max_completion_len: int) -> "Normalizer":
        """Exact step-level counts from every micro-batch's mask [B, G, T] and zero_std [B]."""
        masks, zero_stds = list(masks), list(zero_stds)
        return cls(
            tokens=max(sum(float(m.sum()) for m in masks), 1.0),
            sequences=float(sum(m.shape[0] * m.shape[1] for m in masks)),
            groups=max(sum(float((~z.bool()).sum()) for z in zero_stds), 1.0),
            max_completion_len=int(max_completion_len),
        )


@dataclass
class LossOutput:
    loss: Tensor  # [] scalar
    metrics: dict[str, Tensor]  # detached scalars of this micro-batch: kl, clip_frac, skipped_groups, ...


# ----------------------------------------------------------------------------------------------
# token aggregation: GRPO's per-sequence mean, DAPO's token mean, Dr. GRPO's constant


def _seq_mean_token_mean(per_token: Tensor, mask: Tensor, norm: Normalizer) -> Tensor:
    # GRPO (DeepSeekMath eq. 21): (1/G) sum_i (1/|y_i|) sum_t; length-biased (Dr. GRPO §3.1)
    seq = per_token.sum(-1) / mask.sum(-1).clamp(min=1)  # [B, G]
    return seq.sum() / max(norm.sequences, 1.0)  # []


def _token_mean(per_token: Tensor, mask: Tensor, norm: Normalizer) -> Tensor:
    # DAPO §3.3 token-level policy gradient loss: every token of the step weighs the same
    return per_token.sum() / max(norm.tokens, 1.0)  # []


def _seq_sum_const(per_token: Tensor, mask: Tensor, norm: Normalizer) -> Tensor:
    # Dr. GRPO §3.2: divide by a constant (sequences x generation budget), not by |y_i|
    return per_token.sum() / max(norm.sequences * norm.max_completion_len, 1.0)  # []


def _seq_sum(per_token: Tensor, mask: Tensor, norm: Normalizer) -> Tensor:
    # (1/G) sum_i sum_t: a sequence-level quantity, e.g. the KL of whole completions
    # KL(pi(y|x) || pi_ref(y|x)) = sum_t KL_t, on the scale of Reg-GRPO's summed log-ratio
    return per_token.sum() / max(norm.sequences, 1.0)  # []


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, Normalizer], Tensor]] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "token_mean": _token_mean,
    "seq_sum_const": _seq_sum_const,
    "seq_sum": _seq_sum,
}


def aggregate(per_token: Tensor, mask: Tensor, mode: str, norm: Normalizer) -> Tensor:
    """Scalar loss from per-token values [B, G, T]; positions with mask 0 never count (nor their NaN)."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; known: {sorted(AGGREGATIONS)}")
    m = mask.bool()  # [B, G, T]
    masked = torch.where(m, per_token, torch.zeros_like(per_token))  # [B, G, T]
    return AGGREGATIONS[mode](masked, m.to(per_token.dtype), norm)  # []


# ----------------------------------------------------------------------------------------------
# shared pieces


def _clean(t: Tensor, mask: Tensor) -> Tensor:
    """Zero the padded positions *before* any arithmetic: padding log-probs may be -inf, and
    exp(-inf) in a masked slot would still send 0 * inf = NaN into the gradient."""
    return torch.where(mask.bool(), t, torch.zeros_like(t))  # [B, G, T]


def _k3_kl(x: LossInputs) -> Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref), >= 0 (DeepSeekMath eq. 4, Schulman's k3)."""
    if x.ref_logp is None:
        return torch.zeros_like(x.logp)  # [B, G, T]
    d = _clean(x.ref_logp, x.mask) - _clean(x.logp, x.mask)  # [B, G, T]
    return torch.exp(d) - d - 1  # [B, G, T]


def _importance(per_token: Tensor, x: LossInputs) -> Tensor:
    """Per-token loss times the rollout engine's truncated importance weight (TRL multiplies its
    per-token loss, KL included, the same way); unchanged without one."""
    return per_token if x.is_weight is None else per_token * x.is_weight.detach().to(per_token.dtype)  # [B, G, T]


def _masked_mean(v: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(v.dtype)  # [B, G, T]
    return ((v * m).sum() / m.sum().clamp(min=1)).detach()  # []


def _kl_term(x: LossInputs, cfg: LossConfig, ratio: Tensor) -> tuple[Tensor, Tensor]:
    """(beta * k3 per token [B, G, T], mean KL metric []). beta == 0 needs no reference log-probs.

    `ratio` ([B, G, T] or [B, G, 1], pi_theta / pi_old) weights the k3 term when
    cfg.kl_importance_weight: samples come from pi_old, and the weight makes the KL gradient the
    unbiased reverse-KL gradient (DeepSeek-V3.2 report, arXiv 2512.02556); it changes the gradient
    even on-policy."""
    if cfg.beta == 0.0:
        zero = torch.zeros((), dtype=x.logp.dtype, device=x.logp.device)  # []
        return torch.zeros_like(x.logp), zero  # [B, G, T], []
    if x.ref_logp is None:
        raise ValueError(f"loss.beta = {cfg.beta} needs ref_logp (the reference forward), got None")
    kl = _k3_kl(x)  # [B, G, T]
    weighted = kl * ratio if cfg.kl_importance_weight else kl  # [B, G, T]
    return cfg.beta * weighted, _masked_mean(kl, x.mask)


def _clip_metrics(ratio: Tensor, adv: Tensor, mask: Tensor, cfg: LossConfig) -> dict[str, Tensor]:
    """Share of tokens where the clip is active (as TRL's clip_ratio/region_mean)."""
    low = (ratio < 1 - cfg.epsilon_low) & (adv < 0)  # [B, G, T] or [B, G, 1]
    high = (ratio > 1 + cfg.epsilon_high) & (adv > 0)  # same
    m = mask.bool()  # [B, G, T]
    return {
        "clip_frac": _masked_mean((low | high).expand_as(m).float(), m),
        "clip_frac_low": _masked_mean(low.expand_as(m).float(), m),
        "clip_frac_high": _masked_mean(high.expand_as(m).float(), m),
    }


def _clipped_surrogate(ratio: Tensor, adv: Tensor, cfg: LossConfig) -> Tensor:
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A), PPO's pessimistic bound (DeepSeekMath eq. 3)."""
    clipped = torch.clamp(ratio, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high)  # like ratio
    return -torch.min(ratio * adv, clipped * adv)  # like ratio


# ----------------------------------------------------------------------------------------------
# objectives


def clipped_token_loss(x: LossInputs, cfg: LossConfig, norm: Normalizer) -> LossOutput:
    """GRPO (DeepSeekMath §4.1, eq. 3) with token ratios; also Dr. GRPO and DAPO.

    Dr. GRPO (arXiv 2503.20783 §3.2) keeps this objective and changes the advantage (no std),
    the aggregation (seq_sum_const) and beta (0); DAPO (arXiv 2503.14476 §3.1, §3.3) changes
    eps_high (0.28) and the aggregation (token_mean). Those are settings (config.PRESETS).
    The k3 KL is added to the per-token loss, not to the reward (DeepSeekMath eq. 3).
    """
    logp = _clean(x.logp, x.mask)  # [B, G, T]
    old = _clean(x.old_logp, x.mask).detach()  # [B, G, T]
    ratio = torch.exp(logp - old)  # [B, G, T]; == 1 on-policy but carries the gradient
    adv = x.advantages.detach().to(logp.dtype)  # [B, G] or, per token (GiGPO), [B, G, T]
    adv = adv if adv.dim() == 3 else adv[..., None]  # [B, G, T] or [B, G, 1]
    kl_tok, kl_mean = _kl_term(x, cfg, ratio)  # [B, G, T], []
    per_token = _importance(_clipped_surrogate(ratio, adv, cfg) + kl_tok, x)  # [B, G, T]
    loss = aggregate(per_token, x.mask, cfg.aggregation, norm)  # []
    metrics = {"kl": kl_mean, "zero_std_groups": x.zero_std.sum().detach().float(),  # [] each
               **_clip_metrics(ratio, adv, x.mask, cfg)}
    return LossOutput(loss=loss, metrics=metrics)


def gspo_loss(x: LossInputs, cfg: LossConfig, norm: Normalizer) -> LossOutput:
    """GSPO (arXiv 2507.18071 §4.1, eq. 5-7): one ratio per sequence,
    s_i = exp(mean_t(logp - old_logp)) (the length-normalised sequence ratio), clipped with the
    paper's tiny ranges (§5.1: 3e-4 / 4e-4, set by the gspo preset). The sequence term is spread over the
    sequence's tokens and reduced with `aggregate`; with seq_mean_token_mean (the preset) that is
    exactly the paper's (1/G) sum_i. Differs from GRPO only off-policy (updates_per_rollout > 1).
    """
    m = x.mask.to(x.logp.dtype)  # [B, G, T]
    log_ratio = _clean(x.logp, x.mask) - _clean(x.old_logp, x.mask).detach()  # [B, G, T]
    seq_log_ratio = log_ratio.sum(-1) / m.sum(-1).clamp(min=1)  # [B, G]
    ratio = torch.exp(seq_log_ratio)[..., None]  # [B, G, 1]
    adv = x.advantages.detach()[..., None].to(ratio.dtype)  # [B, G, 1]
    kl_tok, kl_mean = _kl_term(x, cfg, ratio)  # [B, G, T], []
    per_token = _importance(_clipped_surrogate(ratio, adv, cfg).expand_as(log_ratio) + kl_tok, x)  # [B, G, T]
    loss = aggregate(per_token, x.mask, cfg.aggregation, norm)  # []
    metrics = {"kl": kl_mean, "zero_std_groups": x.zero_std.sum().detach().float(),  # [] each
               **_clip_metrics(ratio, adv, x.mask, cfg)}
    return LossOutput(loss=loss, metrics=metrics)


def reg_grpo_loss(x: LossInputs, cfg: LossConfig, norm: Normalizer) -> LossOutput:
    """Reg-GRPO (DeepVideo-R1 arXiv 2506.07464 §3.2, App. A).

    rho_i = sum_t (logp - old_logp)   (token mean when cfg.reg_ratio == "mean", an ablation)
    s_g   = sqrt(var_g rho + reg_eps)
    z_i   = (rho_i - mean_g rho) / s_g
    L     = (1/#groups) sum_{groups, zero_std False} w_g (1/G) sum_i (A_i - z_i)^2 + beta * KL
    No ratio clipping, no min. eps sits *inside* the square root: on-policy every rho_i = 0, and
    a std computed as sqrt(var) backpropagates 0/0 = NaN. Groups with identical rewards have
    target 0 and an ill-posed regression: skipped and counted; the divisor is `norm.groups`, the
    number of contributing groups in the whole step. The paper's "- beta KL" is a sign typo: the
    KL is added to the minimised loss (a KL to subtract would reward drifting away).

    Deviation (cfg.reg_scale == "std", the default): each group's squared error is weighted by
    w_g = s_g / 2, detached. The z-score makes the paper's loss invariant to the scale of rho, so
    its gradient scales as 1/s_g: on-policy (s_g = sqrt(eps)) it is -(2/(G sqrt(eps))) sum_k A_k
    grad log pi(y_k), 1000x REINFORCE at eps = 1e-6, and any KL term next to it vanishes after
    gradient clipping (tiny model: KL / regression gradient 2.4e-6 at beta 0.1). With w_g the
    on-policy gradient is -(1/G) sum_k A_k grad log pi(y_k) whatever eps: the policy gradient,
    equal to clipped_token's with the seq_sum aggregation, so beta (with the seq_sum KL of the
    preset), lr and max_grad_norm mean what they mean there (tiny model: KL / regression gradient
    2.8e-2 at beta 0.1; GRPO's preset at beta 0.04: 1.0e-2). Each group's gradient keeps the
    paper's direction; off-policy (mu > 1) groups are reweighted by their own s_g (the paper gives
    groups whose log-ratios moved least the largest steps). reg_scale "none": the loss as written.
    """
    m = x.mask.to(x.logp.dtype)  # [B, G, T]
    log_ratio = _clean(x.logp, x.mask) - _clean(x.old_logp, x.mask).detach()  # [B, G, T]
    rho = log_ratio.sum(-1)  # [B, G]
    if cfg.reg_ratio == "mean":
        rho = rho / m.sum(-1).clamp(min=1)  # [B, G]
    centred = rho - rho.mean(1, keepdim=True)  # [B, G]
    var = (centred**2).mean(1, keepdim=True)  # [B, 1] population variance, like the advantage's std
    scale = torch.sqrt(var + cfg.reg_eps)  # [B, 1]
    z = centred / scale  # [B, G]
    sq = (x.advantages.detach().to(z.dtype) - z) ** 2  # [B, G]
    if x.is_weight is not None:  # a sequence mode (config.check_vllm): one weight per completion, on every token
        sq = sq * x.is_weight.detach()[..., 0].to(sq.dtype)  # [B, G]
    weight = scale.detach()[:, 0] / 2 if cfg.reg_scale == "std" else torch.ones_like(scale[:, 0])  # [B]
    keep = ~x.zero_std.bool()  # [B]
    per_group = torch.where(keep, sq.mean(1), torch.zeros_like(sq[:, 0]))  # [B]
    kl_tok, kl_mean = _kl_term(x, cfg, torch.exp(log_ratio))  # [B, G, T], []
    regression = (weight * per_group).sum() / max(norm.groups, 1.0)  # []
    loss = regression + aggregate(kl_tok, x.mask, cfg.aggregation, norm)  # []
    metrics = {
        "kl": kl_mean,
        "skipped_groups": (~keep).sum().detach().float(),
        "regression_mse": (per_group.sum() / keep.sum().clamp(min=1)).detach(),
        "rho_std": var.sqrt().mean().detach(),
    }
    return LossOutput(loss=loss, metrics=metrics)


def tic_grpo_loss(x: LossInputs, cfg: LossConfig, norm: Normalizer) -> LossOutput:
    """TIC-GRPO (arXiv 2508.02833): one trajectory-level ratio per completion instead of token ratios,

    w_i = pi_theta(y_i) / pi_old(y_i) = exp(sum_t (logp - old_logp))   (no length normalisation,
    unlike GSPO's geometric mean), clipped from above only:
    per completion -min(w_i A_i, min(w_i, 1 + eps_high) A_i). There is no lower clip: a
    trajectory ratio is a product of |y| token ratios and falls far below 1 - eps routinely, where
    a lower clip would silence every negative-advantage completion. Computed in log space: the
    sum of log-ratios is clamped at log(1 + eps_high) before the exponential, and a product of
    token ratios (which under- / overflows over long completions) is never formed. The A < 0
    branch is unbounded above, as PPO's is (no dual clip).
    The sequence term is spread over its tokens and reduced with `aggregate`, as GSPO's; with
    seq_mean_token_mean (the preset) that is (1/G) sum_i of the sequence terms, and on-policy the
    gradient is -(1/G) sum_i A_i sum_t grad logp_t: sequence-level REINFORCE, not GRPO's
    length-normalised one, so TIC-GRPO differs from GRPO even with one update per rollout.
    """
    log_ratio = _clean(x.logp, x.mask) - _clean(x.old_logp, x.mask).detach()  # [B, G, T]
    log_w = log_ratio.sum(-1)  # [B, G] trajectory log-ratio
    adv = x.advantages.detach().to(log_w.dtype)  # [B, G]
    upper = math.log1p(cfg.epsilon_high)
    clipped = torch.clamp(log_w, max=upper)  # [B, G]
    # min(w A, min(w, 1 + eps) A): for A >= 0 the clipped ratio, for A < 0 the ratio itself
    chosen = torch.where(adv >= 0, clipped, log_w)  # [B, G] log of the ratio the objective uses
    surrogate = -torch.exp(chosen) * adv  # [B, G]
    kl_tok, kl_mean = _kl_term(x, cfg, torch.exp(log_ratio))  # [B, G, T], []; token ratios weight a token's KL
    per_token = _importance(surrogate[..., None].expand_as(log_ratio) + kl_tok, x)  # [B, G, T]
    loss = aggregate(per_token, x.mask, cfg.aggregation, norm)  # []
    high = ((log_w > upper) & (adv > 0))[..., None]  # [B, G, 1]
    m = x.mask.bool()  # [B, G, T]
    metrics = {"kl": kl_mean, "zero_std_groups": x.zero_std.sum().detach().float(),  # [] each
               "clip_frac": _masked_mean(high.expand_as(m).float(), m),
               "log_ratio_abs_max": log_w.detach().abs().max() if log_w.numel() else log_w.new_zeros(())}
    return LossOutput(loss=loss, metrics=metrics)


# The objectives, by `loss.objective`. Paper names (GRPO, Dr. GRPO, DAPO, GSPO, Reg-GRPO, TIC-GRPO) are presets
# of settings in mmgrpo.config.PRESETS: GRPO, Dr. GRPO and DAPO share `clipped_token` and differ in
# aggregation, advantage scaling, clip range and beta.
OBJECTIVES: dict[str, Callable[[LossInputs, LossConfig, Normalizer], LossOutput]] = {
    "clipped_token": clipped_token_loss,
    "gspo": gspo_loss,
    "reg_grpo": reg_grpo_loss,
    "tic_grpo": tic_grpo_loss,
}


def compute_loss(x: LossInputs, cfg: LossConfig, norm: Normalizer) -> LossOutput:
    """`OBJECTIVES[cfg.objective](x, cfg, norm)` with a clear error for an unknown objective."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown loss.objective {cfg.objective!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[cfg.objective](x, cfg, norm)
