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

import torch
from torch import Tensor

from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.batch import Group, pad_stack
from mmgrpo.trainer.logprobs import batch_logprobs
from mmgrpo.trainer.losses import LossInputs, Normalizer, compute_loss
from mmgrpo.trainer.setup import Run


def contributes(g: Group, beta: float) -> bool:
    """A group with zero advantage everywhere and no KL term has an identically zero loss and
    gradient under every variant: skip its forward (it still counts in the denominators)."""
    return beta > 0 or bool((g.advantages != 0).any())


def global_normalizer(run: Run, groups: list[Group]) -> Normalizer:
    """Counts over the whole step (all processes)."""
    counts = torch.tensor(
        [
            sum(float(g.completion_mask.sum()) for g in groups),  # tokens
            float(sum(g.size for g in groups)),  # sequences
            float(sum(not g.zero_std for g in groups)),  # groups with a learning signal
        ],
        device=run.device,
    )
    counts = run.accelerator.reduce(counts, reduction="sum") if run.accelerator.num_processes > 1 else counts
    return Normalizer(
        tokens=float(counts[0]),
        sequences=float(counts[1]),
        groups=float(counts[2]),
        max_completion_len=run.cfg.generation.max_new_tokens,
    )


def logprobs_of(model: torch.nn.Module, run: Run, groups: list[Group]) -> list[torch.Tensor]:
    """Per-token log-probs of every group's completions, all groups in one batched forward."""
    if not groups:
        return []
    return batch_logprobs(model, [g.prompt for g in groups], [g.completion_ids for g in groups],
                          [g.completion_mask for g in groups], mode=run.cfg.forward_mode,
                          temperature=run.cfg.generation.temperature)  # B x [G, C_b]


@torch.no_grad()
def fill_fixed_logprobs(run: Run, groups: list[Group]) -> None:
    """pi_ref (for the KL term) and pi_old (only when mu > 1: with one pass per rollout the ratio's
    denominator is the detached current log-prob, as in TRL)."""
    if run.reference is not None:
        with run.reference.active() as ref:
            ref.eval()
            for g, lp in zip(groups, logprobs_of(ref, run, groups)):
                g.ref_logp = lp  # [G, C_b]
    if run.cfg.optim.updates_per_rollout > 1:
        run.policy.eval()
        for g, lp in zip(groups, logprobs_of(run.policy, run, groups)):
            g.old_logp = lp  # [G, C_b]


# A micro-batch entry: (group to forward, whether it counts in the loss). Fillers count 0; a filler
# group of None is a 1-token text forward, for a process left without any group this step.
Item = tuple[Group | None, bool]


def lockstep(run: Run, active: list[Group], groups: list[Group]) -> list[Item]:
    """`active` padded with fillers to the largest number of active groups on any process, so all
    processes run the same forwards per micro-batch. Fillers are this process's other groups (same
    modules run, vision tower included, which FSDP / ZeRO-3 need), else its active ones again."""
    n = dist.global_max(run.accelerator, len(active))
    taken = {id(g) for g in active}
    spare = [g for g in groups if id(g) not in taken] or active
    fillers = [(spare[i % len(spare)] if spare else None, False) for i in range(n - len(active))]
    return [(g, True) for g in active] + fillers


def micro_loss(run: Run, chunk: list[Item], norm: Normalizer) -> tuple[Tensor, dict[str, float], int]:
    """(loss, loss metrics, number of groups that count) of one micro-batch: one forward for the
    real groups and the fillers together (fillers weigh 0), so every process runs one per chunk."""
    groups = [g for g, counts in chunk if counts]
    fill = [g for g, counts in chunk if not counts and g is not None]
    if not groups and not fill:  # this process has no group at all this step: a 1-token text forward
        ids = torch.zeros((1, 1), dtype=torch.long, device=run.device)  # [1, 1]
        return run.model(input_ids=ids, use_cache=False).logits.sum() * 0.0, {}, 0
    logp = logprobs_of(run.model, run, groups + fill)  # (B + F) x [G, C_b]
    fillers = sum(lp.sum() * 0.0 for lp in logp[len(groups):])  # [] joins the collectives, weighs 0
    if not groups:
        return fillers, {}, 0
    logp = logp[: len(groups)]
    T = max(lp.shape[1] for lp in logp)
    x = LossInputs(
        logp=pad_stack(logp, T),  # [B, G, T]
        old_logp=pad_stack([g.old_logp if g.old_logp is not None else lp.detach() for g, lp in zip(groups, logp)], T),
        ref_logp=pad_stack([g.ref_logp for g in groups], T) if run.reference is not None else None,  # [B, G, T]
        advantages=torch.stack([g.advantages for g in groups]).to(run.device),  # [B, G]
        mask=pad_stack([g.completion_mask.float() for g in groups], T),  # [B, G, T]
        zero_std=torch.tensor([g.zero_std for g in groups], device=run.device),  # [B]
    )
    out = compute_loss(x, run.cfg.loss, norm)
    return out.loss + fillers, {k: float(v) for k, v in out.metrics.items()}, len(groups)


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """No process has anything to train on: a zero gradient (no forward, so no collective needed)."""
    return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)


def accumulate(run: Run, chunks: list[list[Item]], norm: Normalizer, metrics: list) -> float:
    """Loss and backward per micro-batch, gradients synchronised on the last one only; returns this
    process's share of the step loss. Appends (loss metrics, groups) of each micro-batch."""
    acc = run.accelerator
    share = 0.0
    for i, chunk in enumerate(chunks):
        sync = i == len(chunks) - 1
        acc.sync_gradients = sync  # DeepSpeed: reduce and step at the last micro-batch only
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            loss, m, n = micro_loss(run, chunk, norm) if chunk else (zero_loss(run.model), {}, 0)
            if n:
                metrics.append((m, n))
            # DDP averages gradients over processes; the loss is already a share of the global
            # sum (global denominators), so scale back up to a sum.
            acc.backward(loss * acc.num_processes)
        share += float(loss.detach())
    return share


def optimizer_step(run: Run) -> float:
    grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), run.cfg.optim.max_grad_norm)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm) if grad_norm is not None else float("nan")  # DeepSpeed: None before its 1st step


def reduce_stats(run: Run, metrics: list, losses: list[float], grad_norms: list[float], active: int) -> dict[str, float]:
    """Step statistics over all processes and passes. The loss is the sum of the processes' shares;
    loss metrics are means weighted by each micro-batch's groups, except counts (`*_groups`),
    which are summed over the step. The gradient norm is already global (taken after the sync)."""
    parts = dist.gather_list(run.accelerator, [(losses, metrics, active)])
    passes = len(losses)
    out: dict[str, float] = {}
    for k in sorted({k for _, ms, _ in parts for m, _ in ms for k in m}):
        pairs = [(m[k], n) for _, ms, _ in parts for m, n in ms if k in m]
        if k.endswith("_groups"):
            out[k] = sum(v for v, _ in pairs) / passes
        else:
            out[k] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    out["loss"] = sum(sum(ls) for ls, _, _ in parts) / passes
    out["grad_norm"] = sum(grad_norms) / passes
    out["active_groups"] = float(sum(a for _, _, a in parts))
    out["lr"] = run.lr_scheduler.get_last_lr()[0]
    return out


def policy_update(run: Run, groups: list[Group]) -> dict[str, float]:
    cfg = run.cfg
    norm = global_normalizer(run, groups)
    active = [g for g in groups if contributes(g, cfg.loss.beta)]
    if dist.global_max(run.accelerator, len(active)) == 0:
        # nothing to learn anywhere (every group flat, no KL): an AdamW step on zero gradients would
        # still move the weights through its momentum, so skip the update and the LR schedule
        return {"loss": 0.0, "grad_norm": 0.0, "active_groups": 0.0, "skipped_update": 1.0,
                "lr": run.lr_scheduler.get_last_lr()[0]}
    items = lockstep(run, active, groups)
    chunks = [items[i :: cfg.optim.grad_accum] for i in range(cfg.optim.grad_accum)]
    chunks = [c for c in chunks if c] or [[]]
    for chunk in chunks:  # per micro-batch, like the policy pass: bounded memory; fillers too (lockstep)
        fill_fixed_logprobs(run, [g for g, _ in chunk if g is not None])
    metrics: list[tuple[dict[str, float], int]] = []
    losses, grad_norms = [], []
    run.model.train()
    for _ in range(cfg.optim.updates_per_rollout):
        losses.append(accumulate(run, chunks, norm, metrics))
        grad_norms.append(optimizer_step(run))
    return reduce_stats(run, metrics, losses, grad_norms, len(active))
