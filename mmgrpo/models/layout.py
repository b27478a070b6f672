"""How prompts and completions are laid out for a forward: collation, left padding, mRoPE positions,
and the shared-prefix rows of the log-prob forward.

- `collate_prompts`: B prompts left-padded to a common length, every prompt's media concatenated in
  row order (the order the model assigns them to placeholder tokens). Left padding keeps each
  prompt's last token in the last column, so new tokens of all rows line up.
- `rope_positions`: the 3-D (mRoPE) positions of Qwen-VL prompts, by the family's own rule
  (models.positions). Vision tokens get temporal / height / width positions; every text token after
  the prompt continues 1-D from `max(prompt positions) + 1` on all three axes, so the G completions
  of a group all have the same positions, which is what lets them share one encoded prompt.
- `shared_rows`: one row `[prompt_b | c_b1 | ... | c_bG]` per group with a 4-D additive mask in
  which each completion sees the prompt and itself only (never another completion).

Padding never changes what a real token sees: it is masked as a key, and its positions are
arbitrary (0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmgrpo.models.families import family_of
from mmgrpo.models.positions import rope_index
from mmgrpo.models.unwrap import base_model
from mmgrpo.processors.sample import PromptInputs, VisionInputs


@dataclass(frozen=True)
class PromptBatch:
    """B prompts (or B*K, each repeated K times) left-padded to P columns."""

    input_ids: Tensor  # [B, P] long, pad on the left
    attention_mask: Tensor  # [B, P] long, 0 on padding
    mm_token_type_ids: Tensor  # [B, P] int, 0 (text) on padding
    vision: VisionInputs  # every row's media, concatenated in row order

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PromptBatch":
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.mm_token_type_ids.to(device), self.vision.to(device, dtype))


def _cat(parts: list[Tensor | None]) -> Tensor | None:
    present = [p for p in parts if p is not None]
    return torch.cat(present) if present else None


def collate_prompts(prompts: list[PromptInputs], pad_id: int, repeat: int) -> PromptBatch:
    """Left-pad `prompts` into one batch; each prompt appears `repeat` times in a row."""
    rows = [p for p in prompts for _ in range(repeat)]
    width = max(p.length for p in rows)
    ids, mask, kinds = [], [], []
    for p in rows:
        pad = width - p.length
        device = p.input_ids.device
        ids.append(torch.cat([torch.full((pad,), pad_id, dtype=p.input_ids.dtype, device=device), p.input_ids[0]]))
        mask.append(torch.cat([torch.zeros(pad, dtype=torch.long, device=device),
                               torch.ones(p.length, dtype=torch.long, device=device)]))  # [P]
        kinds.append(torch.cat([torch.zeros(pad, dtype=p.mm_token_type_ids.dtype, device=device),
                                p.mm_token_type_ids[0]]))  # [P]
    videos = [p.vision for p in rows if p.vision.video_grid_thw is not None]
    if any(v.second_per_grid_ts is None for v in videos) and any(v.second_per_grid_ts is not None for v in videos):
        raise ValueError("some videos in the batch have second_per_grid_ts and some do not; encode them alike")
    vision = VisionInputs(
        pixel_values=_cat([p.vision.pixel_values for p in rows]),  # [sum patches, D]
        image_grid_thw=_cat([p.vision.image_grid_thw for p in rows]),  # [n_images, 3]
        pixel_values_videos=_cat([p.vision.pixel_values_videos for p in rows]),  # [sum patches, D]
        video_grid_thw=_cat([p.vision.video_grid_thw for p in rows]),  # [n_videos, 3]
        second_per_grid_ts=_cat([p.vision.second_per_grid_ts for p in rows]),  # [n_videos]
    )
    return PromptBatch(torch.stack(ids), torch.stack(mask), torch.stack(kinds), vision)


def rope_positions(model: torch.nn.Module, batch: PromptBatch) -> tuple[Tensor, Tensor]:
    """(mRoPE positions [3, B, P], first completion position per row [B]) by the family's pretraining
    rule (models.positions), never by the installed transformers' `get_rope_index` nor from the
    model's cached `rope_deltas`, so no call depends on the library version or on what an earlier
    forward left behind; padding is skipped and row b gets prompt b's own positions (0 on padding)."""
    v = batch.vision
    return rope_index(family_of(model), base_model(model).config.vision_config, batch.mm_token_type_ids,
                      batch.attention_mask, v.image_grid_thw, v.video_grid_thw, v.second_per_grid_ts)  # [3,B,P], [B]


@dataclass(frozen=True)
class PaddedPrompts:
    """B prompts left-padded to P columns, with their positions."""

    batch: PromptBatch
    position_ids: Tensor  # [3, B, P] long, each prompt's mRoPE positions; 0 on padding
    next_pos: Tensor  # [B] long, position of each prompt's first completion token


def left_pad(model: torch.nn.Module, prompts: list[PromptInputs], pad_id: int) -> PaddedPrompts:
    batch = collate_prompts(prompts, pad_id, repeat=1)
    positions, next_pos = rope_positions(model, batch)
    return PaddedPrompts(batch, positions, next_pos)


def keep_lengths(completion_mask: Tensor) -> Tensor:
    """Per completion, the number of leading tokens that matter: up to and including the last token
    with mask 1. Masked-out tokens before it stay (they are context for later ones); trailing
    padding is dropped."""
    G, C = completion_mask.shape
    if C == 0:
        return torch.zeros(G, dtype=torch.long, device=completion_mask.device)
    cols = torch.arange(1, C + 1, device=completion_mask.device)  # [C], 1-based column numbers
    return (completion_mask.bool() * cols).amax(dim=1)  # [G] long


def prefix_mask(P: int, seg: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask [L, L]: causal over the row, and a completion token attends to the prompt and to
    earlier tokens of its own completion only (never to another completion)."""
    owner = torch.cat([seg.new_full((P,), -1), seg])  # [L] long, -1 = prompt
    L = owner.numel()
    idx = torch.arange(L, device=seg.device)  # [L]
    causal = idx.view(-1, 1) >= idx.view(1, -1)  # [L, L] bool
    visible = (owner.view(1, -1) == -1) | (owner.view(1, -1) == owner.view(-1, 1))  # [L, L] bool
    mask = torch.zeros(L, L, dtype=dtype, device=seg.device)  # [L, L]
    return mask.masked_fill_(~(causal & visible), torch.finfo(dtype).min)


@dataclass(frozen=True)
class SharedRows:
    """B shared-prefix rows `[prompt_b | c_b1[:k] | ... | c_bG[:k]]`, right-padded to L columns."""

    input_ids: Tensor  # [B, L] long, pad id on padding
    mm_token_type_ids: Tensor  # [B, L] int, 0 on padding
    position_ids: Tensor  # [3, B, L] long, mRoPE positions; 0 on padding
    attention_mask: Tensor  # [B, 1, L, L] additive; each row's prefix mask, padding blocked
    logit_keep: Tensor  # [B, L] bool, positions whose logits predict a kept token (each once)
    logit_rank: Tensor  # [N] long, each target's row among the kept logits, in (b, position) order
    targets: Tensor  # [N] long, kept completion tokens in (b, g, j) order
    out_row: Tensor  # [N] long, g of each target
    out_col: Tensor  # [N] long, j of each target
    sizes: tuple[int, ...]  # N_b, targets per group


def _row_parts(prompt: PromptInputs, positions: Tensor, next_pos: int, ids: Tensor, keep: Tensor) -> dict:
    """One group's row: tokens, types, positions, owner of each token and the logit positions."""
    P, G, device = prompt.length, ids.shape[0], prompt.input_ids.device
    keep = keep.to(device)
    comp = torch.cat([ids[g, : int(k)] for g, k in enumerate(keep)])  # [N] long, N = sum(keep)
    within = torch.cat([torch.arange(int(k), device=device) for k in keep])  # [N] long, j of each token
    seg = torch.repeat_interleave(torch.arange(G, device=device), keep)  # [N] long, g of each token
    starts = P + torch.cumsum(keep, 0) - keep  # [G] long, row offset of c_g
    text_pos = (next_pos + within).view(1, -1).expand(3, -1)  # [3, N]: text continues on all axes
    return {
        "input_ids": torch.cat([prompt.input_ids[0], comp]),  # [L_b]
        "mm_types": torch.cat([prompt.mm_token_type_ids[0], prompt.mm_token_type_ids.new_zeros(comp.numel())]),
        "positions": torch.cat([positions, text_pos], dim=1),  # [3, L_b]
        # token j of c_g is predicted at the previous row position: the prompt's last token for j = 0
        "logit_index": torch.where(within == 0, P - 1, starts[seg] + within - 1),  # [N]
        "seg": seg, "within": within, "targets": comp, "P": P,
    }


def shared_rows(model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor],
                keeps: list[Tensor], dtype: torch.dtype, pad_id: int) -> SharedRows:
    """The B groups' shared-prefix rows, padded and stacked (positions from one `rope_positions` call)."""
    padded = left_pad(model, prompts, pad_id)
    rows = []
    for b, (p, ids, keep) in enumerate(zip(prompts, completion_ids, keeps)):
        positions = padded.position_ids[:, b, -p.length:]  # [3, P_b]: left padding dropped
        rows.append(_row_parts(p, positions, int(padded.next_pos[b]), ids, keep))
    B, L = len(rows), max(r["input_ids"].numel() for r in rows)
    device = prompts[0].input_ids.device
    mask = torch.full((B, 1, L, L), torch.finfo(dtype).min, dtype=dtype, device=device)  # [B, 1, L, L]
    keep_pos = torch.zeros(B, L, dtype=torch.bool, device=device)  # [B, L]
    for b, r in enumerate(rows):
        n = r["input_ids"].numel()
        mask[b, 0, :n, :n] = prefix_mask(r["P"], r["seg"], dtype)
        mask[b, 0, n:, n:].fill_diagonal_(0)  # a padding query sees itself only: never a softmax over nothing
        keep_pos[b, r["logit_index"]] = True
    rank = keep_pos.flatten().cumsum(0) - 1  # [B * L] long, index among kept positions
    return SharedRows(
        input_ids=torch.stack([pad_last(r["input_ids"], L, pad_id) for r in rows]),  # [B, L]
        mm_token_type_ids=torch.stack([pad_last(r["mm_types"], L, 0) for r in rows]),  # [B, L]
        position_ids=torch.stack([pad_last(r["positions"], L, 0) for r in rows], dim=1),  # [3, B, L]
        attention_mask=mask,
        logit_keep=keep_pos,
        logit_rank=torch.cat([rank[b * L + r["logit_index"]] for b, r in enumerate(rows)]),  # [N]
        targets=torch.cat([r["targets"] for r in rows]),  # [N]
        out_row=torch.cat([r["seg"] for r in rows]),  # [N]
        out_col=torch.cat([r["within"] for r in rows]),  # [N]
        sizes=tuple(int(r["targets"].numel()) for r in rows),
    )


def pad_last(t: Tensor, length: int, value: float) -> Tensor:
    """Right-pad (or cut) the last dimension of `t` to `length` with `value`."""
    if t.shape[-1] >= length:
        return t[..., :length]
    pad = t.new_full((*t.shape[:-1], length - t.shape[-1]), value)  # [..., length - n]
    return torch.cat([t, pad], dim=-1)  # [..., length]
