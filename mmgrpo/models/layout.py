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

import dataclasses
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


def _row_parts(prompt: PromptInputs, positions: Tensor, ids: Tensor, keep: Tensor, comp_pos: Tensor,
               comp_types: Tensor) -> dict:
    """One group's row: tokens, types, positions, owner of each token and the logit positions;
    `comp_pos` [3, N] and `comp_types` [N] are the completions' own, in (g, j) order."""
    P, G, device = prompt.length, ids.shape[0], prompt.input_ids.device
    keep = keep.to(device)
    comp = torch.cat([ids[g, : int(k)] for g, k in enumerate(keep)])  # [N] long, N = sum(keep)
    within = torch.cat([torch.arange(int(k), device=device) for k in keep])  # [N] long, j of each token
    seg = torch.repeat_interleave(torch.arange(G, device=device), keep)  # [N] long, g of each token
    starts = P + torch.cumsum(keep, 0) - keep  # [G] long, row offset of c_g
    return {
        "input_ids": torch.cat([prompt.input_ids[0], comp]),  # [L_b]
        "mm_types": torch.cat([prompt.mm_token_type_ids[0], comp_types.to(device, prompt.mm_token_type_ids.dtype)]),
        "positions": torch.cat([positions, comp_pos.to(device)], dim=1),  # [3, L_b]
        # token j of c_g is predicted at the previous row position: the prompt's last token for j = 0
        "logit_index": torch.where(within == 0, P - 1, starts[seg] + within - 1),  # [N]
        "seg": seg, "within": within, "targets": comp, "P": P,
    }


@dataclass(frozen=True)
class CompletionMedia:
    """Images that tool answers placed inside a group's G completions (models.multiturn)."""

    mm_token_type_ids: Tensor  # [G, C] int, 1 on the images' placeholders
    pixel_values: tuple[Tensor | None, ...]  # G x [patches_g, D]
    image_grid_thw: tuple[Tensor | None, ...]  # G x [k_g, 3] long
    image_ends: tuple[tuple[int, ...], ...]  # G x k_g, column after each image's last placeholder

    def kept(self, g: int, keep: int) -> tuple[Tensor | None, Tensor | None]:
        """(pixel values, grids) of completion g's images within its first `keep` tokens (a
        completion is scored up to its last model token, so an image is wholly in or out)."""
        k = sum(1 for e in self.image_ends[g] if e <= keep)
        grid = self.image_grid_thw[g]
        if k == 0 or grid is None:
            return None, None
        patches = int(grid[:k].prod(dim=1).sum())
        return self.pixel_values[g][:patches], grid[:k]  # [patches, D], [k, 3]


def extended(prompt: PromptInputs, ids: Tensor, types: Tensor, pixel_values: Tensor | None,
             grid: Tensor | None) -> PromptInputs:
    """The prompt followed by completion tokens `ids` [n] (types [n]) as one sequence, the
    completion's images after the prompt's (the order the model assigns them to placeholders)."""
    v, device = prompt.vision, prompt.input_ids.device
    vision = dataclasses.replace(
        v, pixel_values=_cat([v.pixel_values, None if pixel_values is None else pixel_values.to(device)]),
        image_grid_thw=_cat([v.image_grid_thw, None if grid is None else grid.to(device)]))
    return dataclasses.replace(
        prompt,
        input_ids=torch.cat([prompt.input_ids[0], ids.to(device)]).view(1, -1),  # [1, P + n]
        mm_token_type_ids=torch.cat([prompt.mm_token_type_ids[0],
                                     types.to(device, prompt.mm_token_type_ids.dtype)]).view(1, -1),  # [1, P + n]
        vision=vision,
    )


def completion_contexts(prompt: PromptInputs, ids: Tensor, keep: Tensor, media: CompletionMedia) -> list[PromptInputs]:
    """Each completion g's first keep[g] tokens after the prompt, with its kept images."""
    return [extended(prompt, ids[g, : int(k)], media.mm_token_type_ids[g, : int(k)], *media.kept(g, int(k)))
            for g, k in enumerate(keep.tolist())]


def completion_positions(model: torch.nn.Module, prompt: PromptInputs, next_pos: int, ids: Tensor, keep: Tensor,
                         media: CompletionMedia | None, pad_id: int) -> tuple[Tensor, Tensor]:
    """(positions [3, N], token types [N]) of the G completions' kept tokens in (g, j) order. Text-only
    completions continue 1-D from `next_pos`; with tool images, each completion's positions come from
    the family's rule over [prompt | completion] (images in a tool turn get their 3-D positions and the
    text after them continues after the image's largest position)."""
    device = prompt.input_ids.device
    if media is None:
        within = torch.cat([torch.arange(int(k), device=device) for k in keep])  # [N]
        return (next_pos + within).view(1, -1).expand(3, -1), torch.zeros_like(within)  # [3, N], [N]
    padded = left_pad(model, completion_contexts(prompt, ids, keep, media), pad_id)  # [G, P + max keep] rows
    L = padded.position_ids.shape[2]
    pos = torch.cat([padded.position_ids[:, g, L - int(k):] for g, k in enumerate(keep)], dim=1)  # [3, N]
    types = torch.cat([media.mm_token_type_ids[g, : int(k)] for g, k in enumerate(keep)])  # [N]
    return pos, types


def rows_vision(prompts: list[PromptInputs], keeps: list[Tensor], media: list[CompletionMedia | None]) -> VisionInputs:
    """The vision inputs of shared-prefix rows: per row, the prompt's media then each completion's
    kept tool images, rows in order (the order of their placeholders in the flattened batch)."""
    rows = []
    for p, keep, m in zip(prompts, keeps, media):
        kept = [m.kept(g, int(k)) for g, k in enumerate(keep.tolist())] if m is not None else []
        rows.append(extended(p, p.input_ids.new_zeros(0), p.mm_token_type_ids.new_zeros(0),
                             _cat([pv for pv, _ in kept]), _cat([gr for _, gr in kept])))
    return collate_prompts(rows, 0, repeat=1).vision


def shared_rows(model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor],
                keeps: list[Tensor], media: list[CompletionMedia | None], dtype: torch.dtype,
                pad_id: int) -> SharedRows:
    """The B groups' shared-prefix rows, padded and stacked (the prompts' positions from one
    `rope_positions` call; completions with tool images get theirs from their own contexts)."""
    padded = left_pad(model, prompts, pad_id)
    rows = []
    for b, (p, ids, keep, m) in enumerate(zip(prompts, completion_ids, keeps, media)):
        positions = padded.position_ids[:, b, -p.length:]  # [3, P_b]: left padding dropped
        comp_pos, comp_types = completion_positions(model, p, int(padded.next_pos[b]), ids, keep, m, pad_id)
        rows.append(_row_parts(p, positions, ids, keep, comp_pos, comp_types))
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
