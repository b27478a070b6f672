"""The token ids generation and batching need, resolved in one place.

- eos: any of them ends a completion (the checkpoint's generation config lists `<|im_end|>` and
  `<|endoftext|>` for Qwen; the tokenizer's eos when it lists none);
- pad: fills a completion after its EOS and pads batched rows (never a vision placeholder);
- banned: vision placeholders. A sampled placeholder breaks the next forward (feature / token
  count mismatch), and random or early-training models sample them: they are never sampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmgrpo.models.unwrap import base_model

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


@dataclass(frozen=True)
class SpecialIds:
    eos: tuple[int, ...]  # any of them ends a completion
    pad: int  # after EOS, and padding of batched rows
    banned: tuple[int, ...]  # vision placeholders, never sampled

    def eos_tensor(self, device: torch.device | str) -> Tensor:
        return torch.tensor(self.eos, dtype=torch.long, device=device)  # [n_eos]

    def banned_tensor(self, device: torch.device | str) -> Tensor:
        return torch.tensor(self.banned, dtype=torch.long, device=device)  # [n_banned]


def special_ids(model: torch.nn.Module, tokenizer) -> SpecialIds:
    """EOS from the model's generation config (else the tokenizer's), pad from the tokenizer (else the
    first EOS), banned = the vision placeholders this tokenizer has."""
    eos = getattr(getattr(base_model(model), "generation_config", None), "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos:
        eos = [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    banned = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    banned = [i for i in banned if i is not None and i != tokenizer.unk_token_id]
    return SpecialIds(eos=tuple(int(e) for e in eos), pad=int(pad), banned=tuple(int(b) for b in banned))
