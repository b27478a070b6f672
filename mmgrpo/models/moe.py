"""Mixture-of-experts routers: the load-balancing loss of the forwards a training step runs.

The loss is the Switch Transformer auxiliary loss (arXiv 2101.03961, eqs. 4-6: num_experts * sum over
experts of the fraction of tokens routed to it times its mean router probability), computed by the
family's own transformers function (`load_balancing_loss_func` of its modeling module) over the
router logits of every MoE layer, collected with forward hooks while the log-prob forward runs. The
model's own `output_router_logits` path cannot serve: it takes the 2-D padding mask, and the
shared-prefix forward passes a 4-D one. Every position of the forward counts, padding of the
shared rows included (a few tokens per row).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

import torch
from torch import Tensor

from mmgrpo.models.families import family_of
from mmgrpo.models.unwrap import base_model


class Routing:
    """Router logits ([tokens, experts] per MoE layer and forward) recorded while active."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.logits: list[Tensor] = []

    def loss(self) -> Tensor:
        """The load-balancing loss over everything recorded (a scalar with gradients to the routers)."""
        if not self.logits:
            raise RuntimeError("no router logits were recorded: the forward did not run inside `routing`")
        base = base_model(self.model)
        text = base.config.get_text_config()
        balance = importlib.import_module(type(base).__module__).load_balancing_loss_func
        return balance(tuple(self.logits), text.num_experts, text.num_experts_per_tok)


@contextlib.contextmanager
def routing(model: torch.nn.Module) -> Iterator[Routing]:
    """Records the router logits of the forwards run inside the block. ValueError for a dense model."""
    family = family_of(model)
    if not family.moe:
        raise ValueError(f"{family.title} has no experts: model.router_aux_loss_coef must be 0")
    record = Routing(model)
    routers = [m for name, m in base_model(model).named_modules()
               if name.endswith(family.router) and "visual" not in name]
    handles = [r.register_forward_hook(lambda module, args, out: record.logits.append(out[0])) for r in routers]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()
