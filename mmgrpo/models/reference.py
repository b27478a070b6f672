"""The reference policy pi_ref of the KL term. LoRA: the policy itself with its adapters disabled
(no second copy in memory); full fine-tuning: a frozen copy of the start weights."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Reference:
    policy: torch.nn.Module
    frozen_copy: torch.nn.Module | None

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        if self.frozen_copy is not None:
            yield self.frozen_copy
            return
        with self.policy.disable_adapter():
            yield self.policy


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_reference(policy: torch.nn.Module, beta: float) -> Reference | None:
    """None when beta = 0: the reference forward is skipped entirely."""
    if beta == 0:
        return None
    if hasattr(policy, "disable_adapter"):
        return Reference(policy, None)
    return Reference(policy, frozen(copy.deepcopy(policy)))
