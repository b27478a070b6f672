"""The unit of a batch is the group: one prompt with its G completions.

Keeping the prompt once per group (not repeated G times) is what lets the rollout and the training
forward encode each prompt once (shared-prefix path), and lets a distributed run keep groups whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgrpo.processors.sample import PromptInputs


@dataclass
class Group:
    prompt: PromptInputs  # the prompt, batch dim 1, with its vision inputs
    completion_ids: torch.Tensor  # [G, C] long, right-padded
    completion_mask: torch.Tensor  # [G, C] 1 on completion tokens up to and including EOS
    truncated: torch.Tensor  # [G] bool, no EOS within max_new_tokens
    texts: list[str]  # decoded completions
    rewards: torch.Tensor | None = None  # [G, R] per reward function, NaN = not applicable
    total_reward: torch.Tensor | None = None  # [G] combined reward used for the advantage
    advantages: torch.Tensor | None = None  # [G]
    zero_std: bool = False  # all G rewards equal: no learning signal
    old_logp: torch.Tensor | None = None  # [G, C] behaviour-policy log-probs (only when mu > 1)
    ref_logp: torch.Tensor | None = None  # [G, C] reference log-probs (only when beta > 0)
    augmentation: str = "none"  # "none" | "harder" | "easier": where this group came from
    aug_strength: float = 0.0  # strength of that augmentation (DA), 0 for originals
    stream: int = 0  # seed stream: the group's index in the step's global batch

    @property
    def size(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def sample_id(self) -> str:
        return self.prompt.sample.id


def pad_stack(rows: list[torch.Tensor], length: int, value: float = 0.0) -> torch.Tensor:
    """[G, C_b] tensors of different C_b -> [B, G, length], padded on the right with `value`."""
    out = []
    for r in rows:  # r: [G, C_b]
        pad = torch.full((r.shape[0], length - r.shape[1]), value, dtype=r.dtype, device=r.device)  # [G, L-C_b]
        out.append(torch.cat([r, pad], dim=1))  # [G, L]
    return torch.stack(out)  # [B, G, L]
