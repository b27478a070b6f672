"""Positions and masks for a group (one prompt, G completions), shared by rollout and log-prob code.

Qwen2.5-VL uses 3-D (mRoPE) positions: the prompt's come from `get_rope_index` (vision tokens get
temporal/height/width positions), and every text token after the prompt continues 1-D from
`max(prompt positions) + 1` on all three axes. Completions therefore have the same positions for
every group member, which is what lets G completions share one encoded prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor

from mmgrpo.processors.sample import PromptInputs

# Attention implementations that accept an arbitrary 4-D additive mask; others (flash_attention_2,
# paged, ...) only take padding masks, so the shared-prefix row cannot be expressed for them.
MASK_4D_IMPLEMENTATIONS = ("sdpa", "eager")


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The `Qwen2_5_VLForConditionalGeneration` under a possible PEFT wrapper (adapters stay active:
    PEFT injects them into the modules themselves) and a possible DDP / DeepSpeed / FSDP wrapper.
    Only for attributes (config, get_rope_index, ...): forwards still go through the wrapper the
    caller passed, so DDP synchronises gradients."""
    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attn_implementation(model: torch.nn.Module) -> str:
    """The language model's attention implementation (the one the 4-D mask would go to)."""
    text_cfg = base_model(model).config.get_text_config()
    return str(text_cfg._attn_implementation)


def supports_4d_mask(model: torch.nn.Module) -> bool:
    return attn_implementation(model) in MASK_4D_IMPLEMENTATIONS


def prompt_positions(model: torch.nn.Module, prompt: PromptInputs) -> tuple[Tensor, int]:
    """The prompt's mRoPE positions [3, 1, P] and the position of the first completion token.

    Computed explicitly (not through the model's cached `rope_deltas` attribute) so no call depends
    on what an earlier forward left behind."""
    vision = prompt.vision
    position_ids, _ = base_model(model).model.get_rope_index(
        prompt.input_ids,
        mm_token_type_ids=prompt.mm_token_type_ids,
        image_grid_thw=vision.image_grid_thw,
        video_grid_thw=vision.video_grid_thw,
        second_per_grid_ts=vision.second_per_grid_ts,
    )  # [3, 1, P] long
    return position_ids, int(position_ids.max()) + 1


def keep_lengths(completion_mask: Tensor) -> Tensor:
    """Per completion, the number of leading tokens that matter: up to and including the last token
    with mask 1. Masked-out tokens before it stay (they are context for later ones); trailing
    padding is dropped."""
    G, C = completion_mask.shape
    if C == 0:
        return torch.zeros(G, dtype=torch.long, device=completion_mask.device)
    cols = torch.arange(1, C + 1, device=completion_mask.device)  # [C], 1-based column numbers
    return (completion_mask.bool() * cols).amax(dim=1)  # [G] long


@dataclass
class SharedRow:
    """One sequence `[prompt | c_1[:k_1] | ... | c_G[:k_G]]` with what a forward over it needs."""

    input_ids: Tensor  # [1, L] long
    mm_token_type_ids: Tensor  # [1, L] int, prompt's types then 0 (text)
    position_ids: Tensor  # [3, 1, L] long, mRoPE positions
    attention_mask: Tensor  # [1, 1, L, L] float additive: 0 = attend, dtype min = blocked
    logit_index: Tensor  # [N] long, row positions whose logits predict the kept completion tokens
    targets: Tensor  # [N] long, the kept completion tokens, in (g, j) order
    out_row: Tensor  # [N] long, g of each target
    out_col: Tensor  # [N] long, j of each target


def shared_row(
    prompt: PromptInputs, positions: Tensor, next_pos: int, completion_ids: Tensor, keep: Tensor, dtype: torch.dtype
) -> SharedRow:
    """Build the shared-prefix row. `positions` [3, 1, P] and `next_pos` come from `prompt_positions`;
    `keep` [G] from `keep_lengths`."""
    P = prompt.length
    G = completion_ids.shape[0]
    device = prompt.input_ids.device
    keep_list = [int(k) for k in keep]
    pieces = [completion_ids[g, :k] for g, k in enumerate(keep_list)]
    comp = torch.cat(pieces)  # [N] long, N = sum(keep)
    within = torch.cat([torch.arange(k, device=device) for k in keep_list])  # [N] long, j of each token
    seg = torch.repeat_interleave(torch.arange(G, device=device), keep.to(device))  # [N] long, g of each token
    starts = P + torch.cumsum(keep.to(device), 0) - keep.to(device)  # [G] long, row offset of c_g
    text_pos = (next_pos + within).view(1, 1, -1).expand(3, 1, -1)  # [3, 1, N]
    # token j of c_g is predicted at the previous row position: the prompt's last token for j = 0
    logit_index = torch.where(within == 0, P - 1, starts[seg] + within - 1)  # [N] long
    return SharedRow(
        input_ids=torch.cat([prompt.input_ids, comp.view(1, -1)], dim=1),  # [1, L]
        mm_token_type_ids=torch.cat([prompt.mm_token_type_ids, prompt.mm_token_type_ids.new_zeros(1, comp.numel())], 1),
        position_ids=torch.cat([positions.to(device), text_pos], dim=2),  # [3, 1, L]
        attention_mask=prefix_mask(P, seg, dtype),
        logit_index=logit_index,
        targets=comp,
        out_row=seg,
        out_col=within,
    )


def prefix_mask(P: int, seg: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask [1, 1, L, L]: causal over the row, and a completion token attends to the prompt
    and to earlier tokens of its own completion only (never to another completion)."""
    owner = torch.cat([seg.new_full((P,), -1), seg])  # [L] long, -1 = prompt
    L = owner.numel()
    idx = torch.arange(L, device=seg.device)  # [L]
    causal = idx.view(-1, 1) >= idx.view(1, -1)  # [L, L] bool
    visible = (owner.view(1, -1) == -1) | (owner.view(1, -1) == owner.view(-1, 1))  # [L, L] bool
    mask = torch.zeros(L, L, dtype=dtype, device=seg.device)  # [L, L]
    mask.masked_fill_(~(causal & visible), torch.finfo(dtype).min)
    return mask.view(1, 1, L, L)
