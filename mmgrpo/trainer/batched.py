"""A step's groups in one forward: B prompts, each with G completions, batched together.

The per-group functions (`generate_group`, `group_logprobs`) pay the fixed cost of a forward (kernel
launches, Python, the vision tower call) once per group; with short completions that cost dominates
a step. The helpers here lay B groups out side by side:

- `left_pad`: B prompts left-padded to a common length P (rollout prefill and `repeat` rows), with
  each prompt's own mRoPE positions, so every prompt's last token is in the last column.
- `shared_rows`: B shared-prefix rows `[prompt_b | c_b1 | ... | c_bG]` right-padded to a common
  length L, with a 4-D mask per row (log-prob forward).
- `encode_vision`: every image and video of the batch through the vision tower in one call.

Padding never changes what a real token sees: it is masked as a key, and its positions are
arbitrary (0). The vision tower treats each media item separately (attention is split by item), so
one call over all items gives each item's features as its own call would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmgrpo.eval.generate import collate_prompts
from mmgrpo.processors.sample import PromptInputs, VisionInputs
from mmgrpo.trainer.prefix import base_model, prompt_positions, shared_row


def group_size(completion_ids: list[Tensor]) -> int:
    """The common G of a batch of groups (batched rows assume one G for every group)."""
    sizes = {int(c.shape[0]) for c in completion_ids}
    if len(sizes) != 1:
        raise ValueError(f"every group in a batch needs the same number of completions, got sizes {sorted(sizes)}")
    return sizes.pop()


def filler_token(model: torch.nn.Module) -> int:
    """A token id for padding positions (never a vision placeholder): pad, else the first EOS, else 0."""
    cfg = base_model(model).config.get_text_config()
    for tok in (getattr(cfg, "pad_token_id", None), getattr(cfg, "eos_token_id", None)):
        tok = tok[0] if isinstance(tok, (list, tuple)) and tok else tok
        if isinstance(tok, int):
            return tok
    return 0


@dataclass
class PaddedPrompts:
    """B prompts left-padded to P columns."""

    input_ids: Tensor  # [B, P] long, filler on the left
    attention_mask: Tensor  # [B, P] long, 0 on padding
    mm_token_type_ids: Tensor  # [B, P] int, 0 (text) on padding
    position_ids: Tensor  # [3, B, P] long, each prompt's mRoPE positions; 0 on padding
    next_pos: Tensor  # [B] long, position of each prompt's first completion token
    vision: VisionInputs  # every prompt's media, concatenated in row order

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])


def left_pad(model: torch.nn.Module, prompts: list[PromptInputs], filler: int) -> PaddedPrompts:
    """Collate (as evaluation does) and compute every row's mRoPE positions in one `get_rope_index`
    call; with the attention mask it skips the padding, so row b gets prompt b's own positions."""
    device = prompts[0].input_ids.device
    batch = collate_prompts(prompts, filler).to(device)
    v = batch.vision
    position_ids, _ = base_model(model).model.get_rope_index(
        batch.input_ids,
        mm_token_type_ids=batch.mm_token_type_ids,
        image_grid_thw=v.image_grid_thw,
        video_grid_thw=v.video_grid_thw,
        second_per_grid_ts=v.second_per_grid_ts,
        attention_mask=batch.attention_mask,
    )  # [3, B, P] long, 0 on padding
    next_pos = position_ids.amax(dim=(0, 2)) + 1  # [B] long
    return PaddedPrompts(batch.input_ids, batch.attention_mask, batch.mm_token_type_ids, position_ids, next_pos, v)


def encode_vision(model: torch.nn.Module, vision: VisionInputs) -> dict[str, BaseModelOutputWithPooling]:
    """Every image and video in one vision-tower call, split back per item in the form the model's
    `mm_encoder_outputs` argument takes. Images and videos share the tower and the patch layout
    (an image is a 2-frame temporal patch), so they can be concatenated; the grids keep them apart."""
    parts = [
        (kind, pixels, grid)
        for kind, pixels, grid in (
            ("image", vision.pixel_values, vision.image_grid_thw),
            ("video", vision.pixel_values_videos, vision.video_grid_thw),
        )
        if pixels is not None
    ]
    if not parts:
        return {}
    pixels = torch.cat([p for _, p, _ in parts])  # [n_patches, D], images then videos
    grids = torch.cat([g for _, _, g in parts])  # [n_items, 3]
    features = base_model(model).model.get_image_features(pixels, grids, return_dict=True).pooler_output
    out, start = {}, 0
    for kind, _, grid in parts:
        n = int(grid.shape[0])
        out[kind] = BaseModelOutputWithPooling(pooler_output=tuple(features[start : start + n]))  # n x [tokens, H]
        start += n
    return out


def repeat_features(encoded: dict[str, BaseModelOutputWithPooling], items: list[dict[str, int]], G: int) -> dict:
    """Encoder outputs for G rows per prompt: prompt b's items (counted in `items[b]`) listed G times,
    so every row gets its own media while the tower ran once."""
    out = {}
    for kind, enc in encoded.items():
        per_prompt, start = [], 0
        for counts in items:
            n = counts.get(kind, 0)
            per_prompt.append(tuple(enc.pooler_output[start : start + n]) * G)
            start += n
        out[kind] = BaseModelOutputWithPooling(pooler_output=sum(per_prompt, ()))
    return out


def media_counts(prompt: PromptInputs) -> dict[str, int]:
    v = prompt.vision
    return {
        "image": 0 if v.image_grid_thw is None else int(v.image_grid_thw.shape[0]),
        "video": 0 if v.video_grid_thw is None else int(v.video_grid_thw.shape[0]),
    }


@dataclass
class SharedRows:
    """B shared-prefix rows `[prompt_b | c_b1[:k] | ... | c_bG[:k]]`, right-padded to L columns."""

    input_ids: Tensor  # [B, L] long, filler on padding
    mm_token_type_ids: Tensor  # [B, L] int, 0 on padding
    position_ids: Tensor  # [3, B, L] long, mRoPE positions; 0 on padding
    attention_mask: Tensor  # [B, 1, L, L] additive; each row's prefix mask, padding blocked
    logit_keep: Tensor  # [B, L] bool, positions whose logits predict a kept token (each once)
    logit_rank: Tensor  # [N] long, each target's row in the kept logits, flattened in (b, position) order
    targets: Tensor  # [N] long, kept completion tokens in (b, g, j) order
    out_row: Tensor  # [N] long, g of each target
    out_col: Tensor  # [N] long, j of each target
    sizes: list[int]  # N_b, targets per group


def shared_rows(
    model: torch.nn.Module,
    prompts: list[PromptInputs],
    completion_ids: list[Tensor],
    keeps: list[Tensor],
    dtype: torch.dtype,
    filler: int,
) -> SharedRows:
    """Each group's row from `prefix.shared_row` (the per-group layout, unchanged), padded and stacked."""
    rows = []
    for prompt, ids, keep in zip(prompts, completion_ids, keeps):
        positions, next_pos = prompt_positions(model, prompt)  # [3, 1, P_b], int
        rows.append(shared_row(prompt, positions, next_pos, ids, keep, dtype))
    B, L = len(rows), max(r.input_ids.shape[1] for r in rows)
    device = rows[0].input_ids.device
    keep_pos = torch.zeros(B, L, dtype=torch.bool, device=device)  # [B, L]
    for b, r in enumerate(rows):
        keep_pos[b, r.logit_index] = True
    rank = keep_pos.flatten().cumsum(0) - 1  # [B * L] long, index among kept positions
    return SharedRows(
        input_ids=torch.cat([_pad_last(r.input_ids, L, filler) for r in rows]),  # [B, L]
        mm_token_type_ids=torch.cat([_pad_last(r.mm_token_type_ids, L, 0) for r in rows]),  # [B, L]
        position_ids=torch.cat([_pad_last(r.position_ids, L, 0) for r in rows], dim=1),  # [3, B, L]
        attention_mask=block_mask([r.attention_mask for r in rows], L, dtype),  # [B, 1, L, L]
        logit_keep=keep_pos,
        logit_rank=torch.cat([rank[b * L + r.logit_index] for b, r in enumerate(rows)]),  # [N]
        targets=torch.cat([r.targets for r in rows]),  # [N]
        out_row=torch.cat([r.out_row for r in rows]),  # [N]
        out_col=torch.cat([r.out_col for r in rows]),  # [N]
        sizes=[int(r.targets.numel()) for r in rows],
    )


def block_mask(masks: list[Tensor], L: int, dtype: torch.dtype) -> Tensor:
    """Stack per-row additive masks [1, 1, L_b, L_b] into [B, 1, L, L]. Padding keys are blocked for
    every query; a padding query attends to itself only (its output is never read, and a fully
    blocked row would be a softmax over nothing)."""
    B = len(masks)
    device = masks[0].device
    out = torch.full((B, 1, L, L), torch.finfo(dtype).min, dtype=dtype, device=device)  # [B, 1, L, L]
    lengths = torch.tensor([m.shape[-1] for m in masks], device=device)  # [B]
    for b, m in enumerate(masks):
        n = m.shape[-1]
        out[b, :, :n, :n] = m[0]
    padding = torch.arange(L, device=device).view(1, -1) >= lengths.view(-1, 1)  # [B, L] bool
    out.diagonal(dim1=-2, dim2=-1).masked_fill_(padding.view(B, 1, L), 0)
    return out


def _pad_last(t: Tensor, length: int, value: int) -> Tensor:
    """Right-pad the last dimension of `t` to `length` with `value`."""
    pad = t.new_full((*t.shape[:-1], length - t.shape[-1]), value)  # [..., length - n]
    return torch.cat([t, pad], dim=-1)  # [..., length]
