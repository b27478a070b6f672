"""The policy update: reference / old-policy log-probs, then loss + backward over micro-batches of
groups and one optimizer step per pass (mu passes per rollout).

Loss denominators (tokens, sequences, groups) are counted once over the whole step's batch, on every
process, so summing micro-batch losses (gradient accumulation) and summing gradients across
processes gives exactly the full-batch loss; no variant is special-cased here.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from mmgrpo.trainer.batch import Group, pad_stack
from mmgrpo.trainer.logprobs import group_logprobs
from mmgrpo.trainer.losses import LOSSES, LossInputs, Normalizer
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
    return [
        group_logprobs(model, g.prompt, g.completion_ids, g.completion_mask, mode=run.cfg.forward_mode,
                       temperature=run.cfg.generation.temperature)  # [G, C_b]
        for g in groups
    ]


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


def micro_loss(run: Run, groups: list[Group], norm: Normalizer):
    logp = logprobs_of(run.model, run, groups)  # B x [G, C_b]
    T = max(lp.shape[1] for lp in logp)
    x = LossInputs(
        logp=pad_stack(logp, T),  # [B, G, T]
        old_logp=pad_stack([g.old_logp if g.old_logp is not None else lp.detach() for g, lp in zip(groups, logp)], T),
        ref_logp=pad_stack([g.ref_logp for g in groups], T) if run.reference is not None else None,  # [B, G, T]
        advantages=torch.stack([g.advantages for g in groups]).to(run.device),  # [B, G]
        mask=pad_stack([g.completion_mask.float() for g in groups], T),  # [B, G, T]
        zero_std=torch.tensor([g.zero_std for g in groups], device=run.device),  # [B]
    )
    return LOSSES[run.cfg.loss.name](x, run.cfg.loss, norm)


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A process with nothing to train on still joins the gradient all-reduce."""
    return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)


def policy_update(run: Run, groups: list[Group]) -> dict[str, float]:
    cfg, acc = run.cfg, run.accelerator
    norm = global_normalizer(run, groups)
    active = [g for g in groups if contributes(g, cfg.loss.beta)]
    fill_fixed_logprobs(run, active)
    chunks = [active[i :: cfg.optim.grad_accum] for i in range(cfg.optim.grad_accum)]
    chunks = [c for c in chunks if c] or [[]]
    stats: dict[str, list[float]] = defaultdict(list)
    run.model.train()
    for _ in range(cfg.optim.updates_per_rollout):
        step_loss = 0.0
        for i, chunk in enumerate(chunks):
            sync = i == len(chunks) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(run.model):
                if chunk:
                    out = micro_loss(run, chunk, norm)
                    loss = out.loss
                    for k, v in out.metrics.items():
                        stats[k].append(float(v))
                else:
                    loss = zero_loss(run.model)
                # DDP averages gradients over processes; the loss is already a share of the global
                # sum (global denominators), so scale back up to a sum.
                acc.backward(loss * acc.num_processes)
                step_loss += float(loss.detach())
        grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        stats["loss"].append(step_loss)
        stats["grad_norm"].append(float(grad_norm))
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["active_groups"] = float(len(active))
    out["lr"] = run.lr_scheduler.get_last_lr()[0]
    return out
