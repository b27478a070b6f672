"""The policy update: reference / old-policy log-probs, then loss + backward over micro-batches of
groups and one optimizer step per pass (mu passes per rollout).

Loss denominators (tokens, sequences, groups) are counted once over the whole step's batch, on every
process, so summing micro-batch losses (gradient accumulation) and summing gradients across
processes gives exactly the full-batch loss; no variant is special-cased here.

Several processes: every process runs the same number of micro-batches and forwards (`lockstep`),
padding with zero-weight filler forwards, because DDP's synced backward, FSDP and ZeRO-3 are
collectives; the statistics returned are those of the whole step (`reduce_stats`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from mmgrpo.config import LossConfig, OptimConfig, TrainConfig
from mmgrpo.models.logprobs import batch_logprobs
from mmgrpo.models.moe import routing
from mmgrpo.models.reference import Reference
from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer import importance
from mmgrpo.trainer.losses import LossInputs, Normalizer, compute_loss
from mmgrpo.trainer.records import RolloutGroup, ScoredStep, pad_stack


@dataclass(frozen=True)
class PolicyParts:
    """What the update trains: the (wrapped) policy, its reference, optimizer and LR schedule."""

    accelerator: Accelerator
    model: torch.nn.Module  # possibly wrapped by accelerate (DDP / FSDP / DeepSpeed)
    reference: Reference | None  # None when beta == 0
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any  # torch.optim.lr_scheduler.LambdaLR


@dataclass(frozen=True)
class UpdateSettings:
    loss: LossConfig
    optim: OptimConfig
    forward_mode: str  # "shared" | "repeat"
    temperature: float  # the sampling temperature: log-probs of the distribution that was sampled
    max_new_tokens: int  # Dr. GRPO's constant normaliser
    pad_id: int
    router_aux_loss_coef: float  # MoE load-balancing loss weight (models.moe); 0 = none
    is_mode: str  # importance sampling of engine-sampled groups (trainer/importance.py); "none" = off
    is_cap: float  # the ratio's truncation / mask threshold (generation.vllm.is_cap)

    @classmethod
    def of(cls, cfg: TrainConfig, pad_id: int) -> "UpdateSettings":
        v = cfg.generation.vllm
        budget = cfg.tools.max_total_tokens if cfg.tools.enabled else cfg.generation.max_new_tokens  # a completion's
        return cls(cfg.loss, cfg.optim, cfg.forward_mode, cfg.generation.temperature, budget,  # longest possible
                   pad_id, cfg.model.router_aux_loss_coef, v.is_mode, v.is_cap)


@dataclass(frozen=True)
class Fixed:
    """Log-probs that do not move during the update, of one group."""

    ref: Tensor | None  # [G, C] reference (beta > 0)
    old: Tensor | None  # [G, C] behaviour policy before the first pass (mu > 1); None = on-policy


# A micro-batch entry: (index of the group in the step, whether it counts in the loss). Fillers
# count 0; a filler of None is a 1-token text forward, for a process left without any group.
Item = tuple[int | None, bool]


def contributes(advantages: Tensor, beta: float) -> bool:
    """A group with zero advantage everywhere and no KL term has an identically zero loss and
    gradient under every objective: skip its forward (it still counts in the denominators)."""
    return beta > 0 or bool((advantages != 0).any())


def global_normalizer(acc: Accelerator, step: ScoredStep, max_new_tokens: int) -> Normalizer:
    """Counts over the whole step (all processes)."""
    counts = torch.tensor([
        sum(float(g.completion_mask.sum()) for g in step.groups),  # tokens
        float(sum(g.size for g in step.groups)),  # sequences
        float((~step.zero_std).sum()),  # groups with a learning signal
    ], device=acc.device)
    counts = acc.reduce(counts, reduction="sum") if acc.num_processes > 1 else counts
    return Normalizer(tokens=float(counts[0]), sequences=float(counts[1]), groups=float(counts[2]),
                      max_completion_len=max_new_tokens)


def logprobs_of(model: torch.nn.Module, groups: list[RolloutGroup], s: UpdateSettings) -> list[Tensor]:
    """Per-token log-probs of every group's completions, all groups in one batched forward."""
    if not groups:
        return []
    return batch_logprobs(model, [g.prompt for g in groups], [g.completion_ids for g in groups],
                          [g.completion_mask for g in groups], s.forward_mode, s.temperature, s.pad_id,
                          media=[g.tools.media if g.tools is not None else None for g in groups])  # B x [G, C_b]


@torch.no_grad()
def fixed_logprobs(parts: PolicyParts, groups: list[RolloutGroup], s: UpdateSettings,
                   timings: dict[str, float]) -> list[Fixed]:
    """pi_ref (for the KL term) and pi_old (only when mu > 1: with one pass per rollout the ratio's
    denominator is the detached current log-prob, as in TRL)."""
    ref: list[Tensor | None] = [None] * len(groups)
    old: list[Tensor | None] = [None] * len(groups)
    t0 = time.perf_counter()
    if parts.reference is not None:
        with parts.reference.active() as model:
            model.eval()
            ref = logprobs_of(model, groups, s)
    t1 = time.perf_counter()
    if s.optim.updates_per_rollout > 1:
        policy = parts.accelerator.unwrap_model(parts.model)
        policy.eval()
        old = logprobs_of(policy, groups, s)
    timings["reference"] = timings.get("reference", 0.0) + t1 - t0
    timings["old_policy"] = timings.get("old_policy", 0.0) + time.perf_counter() - t1
    return [Fixed(r, o) for r, o in zip(ref, old)]


def lockstep(acc: Accelerator, active: list[int], n_groups: int) -> list[Item]:
    """`active` padded with fillers to the largest number of active groups on any process, so all
    processes run the same forwards per micro-batch. Fillers are this process's other groups (same
    modules run, vision tower included, which FSDP / ZeRO-3 need), else its active ones again."""
    n = dist.global_max(acc, len(active))
    spare = [i for i in range(n_groups) if i not in set(active)] or active
    fillers = [(spare[k % len(spare)] if spare else None, False) for k in range(n - len(active))]
    return [(i, True) for i in active] + fillers


def micro_loss(parts: PolicyParts, step: ScoredStep, chunk: list[Item], fixed: dict[int, Fixed], norm: Normalizer,
               s: UpdateSettings) -> tuple[Tensor, dict[str, float], int]:
    """(loss, loss metrics, number of groups that count) of one micro-batch: one forward for the
    real groups and the fillers together (fillers weigh 0), so every process runs one per chunk."""
    real = [i for i, counts in chunk if counts]
    fill = [i for i, counts in chunk if not counts and i is not None]
    if not real and not fill:  # this process has no group at all this step: a 1-token text forward
        ids = torch.zeros((1, 1), dtype=torch.long, device=parts.accelerator.device)  # [1, 1]
        return parts.model(input_ids=ids, use_cache=False).logits.sum() * 0.0, {}, 0
    with routing(parts.model) if s.router_aux_loss_coef else contextlib.nullcontext() as routed:
        logp = logprobs_of(parts.model, [step.groups[i] for i in real + fill], s)  # (B + F) x [G, C_b]
    fillers = sum(lp.sum() * 0.0 for lp in logp[len(real):])  # [] joins the collectives, weighs 0
    if not real:
        return fillers, {}, 0
    logp = logp[: len(real)]
    T = max(lp.shape[1] for lp in logp)
    groups = [step.groups[i] for i in real]
    old = pad_stack([fixed[i].old if fixed[i].old is not None else lp.detach() for i, lp in zip(real, logp)],
                    T, 0.0)  # [B, G, T]
    mask = pad_stack([g.completion_mask.float() for g in groups], T, 0.0)  # [B, G, T]
    is_weight, engine_metrics = engine_correction(groups, old, mask, s)
    x = LossInputs(
        logp=pad_stack(logp, T, 0.0),  # [B, G, T]
        old_logp=old,  # [B, G, T]
        ref_logp=pad_stack([fixed[i].ref for i in real], T, 0.0) if parts.reference is not None else None,  # [B, G, T]
        advantages=(step.advantages[real] if step.token_advantages is None else  # [B, G], or GiGPO's [B, G, T]
                    pad_stack([step.token_advantages[i] for i in real], T, 0.0)).to(parts.accelerator.device),
        mask=mask,  # [B, G, T]
        zero_std=step.zero_std[real].to(parts.accelerator.device),  # [B]
        is_weight=is_weight,  # [B, G, T] or None
    )
    out = compute_loss(x, s.loss, norm)
    metrics = {k: float(v) for k, v in {**out.metrics, **engine_metrics}.items()}
    loss = out.loss + fillers
    if routed is not None:  # weighted by the chunk's share of the step's sequences: the step adds coef * mean
        aux = routed.loss()  # []
        metrics["moe/aux_loss"] = float(aux.detach())
        loss = loss + s.router_aux_loss_coef * aux * (sum(g.size for g in groups) / norm.sequences)
    return loss, metrics, len(real)


def engine_correction(groups: list[RolloutGroup], old: Tensor, mask: Tensor,
                      s: UpdateSettings) -> tuple[Tensor | None, dict[str, Tensor]]:
    """(truncated importance weights [B, G, T] or None, mismatch metrics) of groups a rollout engine
    sampled (vLLM: every group or none); old [B, G, T] are the trainer's log-probs of the weights the
    engine was given."""
    if any(g.engine_logp is None for g in groups):
        return None, {}
    engine = pad_stack([g.engine_logp.to(old.device) for g in groups], old.shape[-1], 0.0)  # [B, G, T]
    delta = importance.logp_delta(old, engine, mask)  # [B, G, T]
    weights = importance.importance_weights(delta, mask, s.is_mode, s.is_cap) if s.is_mode != "none" else None
    return weights, importance.mismatch_metrics(delta, mask, s.is_mode, s.is_cap)


def zero_loss(model: torch.nn.Module) -> Tensor:
    """No process has anything to train on: a zero gradient (no forward, so no collective needed)."""
    return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)


def accumulate(parts: PolicyParts, step: ScoredStep, chunks: list[list[Item]], fixed: dict[int, Fixed],
               norm: Normalizer, s: UpdateSettings, metrics: list) -> float:
    """Loss and backward per micro-batch, gradients synchronised on the last one only; returns this
    process's share of the step loss. Appends (loss metrics, groups) of each micro-batch."""
    acc = parts.accelerator
    share = 0.0
    for i, chunk in enumerate(chunks):
        sync = i == len(chunks) - 1
        acc.sync_gradients = sync  # DeepSpeed: reduce and step at the last micro-batch only
        with contextlib.nullcontext() if sync else acc.no_sync(parts.model):
            loss, m, n = micro_loss(parts, step, chunk, fixed, norm, s) if chunk else (zero_loss(parts.model), {}, 0)
            if n:
                metrics.append((m, n))
            # DDP averages gradients over processes; the loss is already a share of the global
            # sum (global denominators), so scale back up to a sum.
            acc.backward(loss * acc.num_processes)
        share += float(loss.detach())
    return share


class NonFiniteGradientError(RuntimeError):
    """The update's gradient norm is NaN or inf (bf16/fp32: no loss scaler to skip the step)."""


def optimizer_step(parts: PolicyParts, max_grad_norm: float) -> float:
    return clipped_step(parts.accelerator, parts.model, parts.optimizer, parts.lr_scheduler, max_grad_norm)


def clipped_step(acc: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                 max_grad_norm: float) -> float:
    """Clip, step, schedule, zero; returns the gradient norm before clipping (RL and SFT alike)."""
    grad_norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    # The norm is global (taken after the gradient sync), so every process decides alike. An AdamW
    # step on NaN gradients would make every weight NaN and the next checkpoint worthless; fp16's
    # loss scaler skips such steps itself, which is its normal start-up, so it is left to it.
    if grad_norm is not None and acc.scaler is None and not torch.isfinite(torch.as_tensor(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteGradientError(
            f"the gradient norm is {float(grad_norm)}: the weights were not updated and the last checkpoint "
            "is intact; lower optim.lr, check the reward scale, or train in model.dtype=float32")
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm) if grad_norm is not None else float("nan")  # DeepSpeed: None before its 1st step


def reduce_stats(parts: PolicyParts, metrics: list, losses: list[float], grad_norms: list[float],
                 active: int) -> dict[str, float]:
    """Step statistics over all processes and passes. The loss is the sum of the processes' shares;
    loss metrics are means weighted by each micro-batch's groups, except counts (`*_groups`),
    which are summed over the step, and maxima (`*_max`), the step's largest. The gradient norm is
    already global (taken after the sync)."""
    parts_ = dist.gather_list(parts.accelerator, [(losses, metrics, active)])
    passes = len(losses)
    out: dict[str, float] = {}
    for k in sorted({k for _, ms, _ in parts_ for m, _ in ms for k in m}):
        pairs = [(m[k], n) for _, ms, _ in parts_ for m, n in ms if k in m]
        if k.endswith("_groups"):
            out[k] = sum(v for v, _ in pairs) / passes
        elif k.endswith("_max"):  # e.g. rollout/logp_delta_max: the largest of the step
            out[k] = max(v for v, _ in pairs)
        else:
            out[k] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    out["loss"] = sum(sum(ls) for ls, _, _ in parts_) / passes
    out["grad_norm"] = sum(grad_norms) / passes
    out["active_groups"] = float(sum(a for _, _, a in parts_))
    out["lr"] = parts.lr_scheduler.get_last_lr()[0]
    return out


def policy_update(parts: PolicyParts, step: ScoredStep, s: UpdateSettings,
                  timings: dict[str, float]) -> dict[str, float]:
    """mu passes of loss + backward + optimizer step over the scored step; returns its statistics
    and adds the wall times of its phases to `timings` (reference, old_policy, update_fwd_bwd,
    update_optimizer; on a GPU they are only exact after a synchronisation, which the benchmark does)."""
    norm = global_normalizer(parts.accelerator, step, s.max_new_tokens)
    # a group whose mask is all 0 (every trajectory over-turn-masked, tools.mask_over_turn) has no loss either
    adv = step.advantages if step.token_advantages is None else step.token_advantages  # per completion / token
    active = [i for i in range(len(step.groups))
              if contributes(adv[i], s.loss.beta) and bool(step.groups[i].completion_mask.any())]
    if dist.global_max(parts.accelerator, len(active)) == 0:
        # nothing to learn anywhere (every group flat, no KL): an AdamW step on zero gradients would
        # still move the weights through its momentum, so skip the update and the LR schedule
        return {"loss": 0.0, "grad_norm": 0.0, "active_groups": 0.0, "skipped_update": 1.0,
                "lr": parts.lr_scheduler.get_last_lr()[0]}
    items = lockstep(parts.accelerator, active, len(step.groups))
    chunks = [items[k :: s.optim.grad_accum] for k in range(s.optim.grad_accum)]
    chunks = [c for c in chunks if c] or [[]]
    fixed: dict[int, Fixed] = {}
    for chunk in chunks:  # per micro-batch, like the policy pass: bounded memory; fillers too (lockstep)
        idx = [i for i, _ in chunk if i is not None]
        fixed.update(zip(idx, fixed_logprobs(parts, [step.groups[i] for i in idx], s, timings)))
    metrics: list[tuple[dict[str, float], int]] = []
    losses, grad_norms = [], []
    parts.model.train()
    for _ in range(s.optim.updates_per_rollout):
        t0 = time.perf_counter()
        losses.append(accumulate(parts, step, chunks, fixed, norm, s, metrics))
        t1 = time.perf_counter()
        grad_norms.append(optimizer_step(parts, s.optim.max_grad_norm))
        timings["update_fwd_bwd"] = timings.get("update_fwd_bwd", 0.0) + t1 - t0
        timings["update_optimizer"] = timings.get("update_optimizer", 0.0) + time.perf_counter() - t1
    return reduce_stats(parts, metrics, losses, grad_norms, len(active))
