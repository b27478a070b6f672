"""mRoPE positions of Qwen-VL prompts, by the rule each family was pretrained with: computed here for
every forward (rollout, log-probs, evaluation, inference), never left to the installed transformers,
whose rule differs in some versions (docs/families.md).

A prompt is a sequence of runs of text tokens and vision blocks: an image, a video, or in the
`timestamps` families one temporal patch of a video (its time is the text before it). Text tokens
have the same position on the three axes (temporal, height, width), one more per token. The merged
grid cell (t, h, w) of a block starting at s is at (s + time(t), s + h, s + w), where time(t) is,
by the family's `video_time`:

    index       t                                                  Qwen2-VL
    seconds     floor(t * second_per_grid * tokens_per_second)     Qwen2.5-VL (an image has t = 0 only)
    timestamps  0: each temporal patch is a block of its own       Qwen3-VL, Qwen3.5

The token after a block is at the block's largest position + 1 on every axis, as in the original
Qwen2-VL / Qwen2.5-VL code and vLLM. transformers 5.19-5.24 continue at s + max(h, w) instead,
which drops a Qwen2-VL / Qwen2.5-VL video's temporal extent: text after a long clip then reuses the
clip's temporal positions. (For one-frame blocks, images and Qwen3's temporal patches, both rules
agree.) Completions continue 1-D from the prompt's largest position + 1 (`next_pos`).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from mmgrpo.models.families import Family

Block = tuple[int, int, int, Tensor]  # (t, h, w) merged grid of one vision block, its times [t] long


def block_positions(start: int, t: int, h: int, w: int, times: Tensor) -> Tensor:
    """[3, t*h*w] long: positions of a block's merged cells in the tower's order (t, then h, then w)."""
    tt = times.view(-1, 1, 1).expand(t, h, w)  # [t, h, w]
    hh = torch.arange(h).view(1, -1, 1).expand(t, h, w)  # [t, h, w]
    ww = torch.arange(w).view(1, 1, -1).expand(t, h, w)  # [t, h, w]
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start  # [3, t*h*w]


def video_blocks(family: Family, grid: list[int], merge: int, second_per_grid: Tensor | None,
                 tokens_per_second: float) -> list[Block]:
    """The vision blocks of one video, with the temporal positions of its patches."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    if family.video_time == "timestamps":
        return [(1, h, w, torch.zeros(1, dtype=torch.long))] * t
    if family.video_time == "index":
        return [(t, h, w, torch.arange(t))]
    # Qwen2.5-VL's own arithmetic: long index * float32 seconds * int rate, floored
    spg = second_per_grid if second_per_grid is not None else torch.tensor(1.0)
    return [(t, h, w, (torch.arange(t) * spg.cpu() * tokens_per_second).long())]


def media_blocks(family: Family, vision_config, image_grid_thw: Tensor | None, video_grid_thw: Tensor | None,
                 second_per_grid_ts: Tensor | None) -> dict[int, Iterator[Block]]:
    """Vision blocks by token type (1 image, 2 video), in the order the prompts' placeholders use them."""
    merge = int(vision_config.spatial_merge_size)
    images = [] if image_grid_thw is None else image_grid_thw.tolist()
    videos = [] if video_grid_thw is None else video_grid_thw.tolist()
    tps = getattr(vision_config, "tokens_per_second", 1)
    image_blocks = [(1, g[1] // merge, g[2] // merge, torch.zeros(1, dtype=torch.long)) for g in images]
    video_list = [b for i, g in enumerate(videos) for b in video_blocks(
        family, g, merge, None if second_per_grid_ts is None else second_per_grid_ts[i], tps)]
    return {1: iter(image_blocks), 2: iter(video_list)}


def prompt_positions(types: Tensor, blocks: dict[int, Iterator[Block]], row: int) -> Tensor:
    """[3, n] long positions of one prompt's n tokens (no padding) with token types `types` [n]."""
    kinds, counts = torch.unique_consecutive(types.cpu(), return_counts=True)  # runs of one type
    parts, start = [], 0
    for kind, n in zip(kinds.tolist(), counts.tolist()):
        if kind == 0:
            parts.append(torch.arange(start, start + n).view(1, -1).expand(3, -1))  # [3, n]
            start += n
            continue
        pos, left = [], n  # a run may hold several blocks (a video right after an image has no text between)
        while left > 0:
            block = next(blocks[kind], None)
            if block is None:
                raise ValueError(f"prompt {row}: more {'image' if kind == 1 else 'video'} placeholders than grids")
            t, h, w, times = block
            if t * h * w > left:
                raise ValueError(f"prompt {row}: a run of {n} placeholders does not match the grids ({t}x{h}x{w} left over)")
            pos.append(block_positions(start, t, h, w, times))  # [3, t*h*w]
            start = int(pos[-1].max()) + 1  # the original rule: after the block's largest position
            left -= t * h * w
        parts += pos
    return torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)  # [3, n]


def rope_index(family: Family, vision_config, mm_token_type_ids: Tensor, attention_mask: Tensor,
               image_grid_thw: Tensor | None, video_grid_thw: Tensor | None,
               second_per_grid_ts: Tensor | None) -> tuple[Tensor, Tensor]:
    """(positions [3, B, P] long, 0 on padding; first completion position per row [B] long) of B
    prompts whose media grids are concatenated in row order."""
    B, P = mm_token_type_ids.shape
    blocks = media_blocks(family, vision_config, image_grid_thw, video_grid_thw, second_per_grid_ts)
    positions = torch.zeros(3, B, P, dtype=torch.long)  # [3, B, P]
    next_pos = torch.zeros(B, dtype=torch.long)  # [B]
    keep = attention_mask.bool().cpu()  # [B, P]
    for b in range(B):
        row = prompt_positions(mm_token_type_ids[b].cpu()[keep[b]], blocks, b)  # [3, n_b]
        positions[:, b, keep[b]] = row
        next_pos[b] = int(row.max()) + 1 if row.numel() else 0
    for kind, rest in blocks.items():
        if next(rest, None) is not None:
            raise ValueError(f"more {'image' if kind == 1 else 'video'} grids than placeholders in the prompts")
    device = mm_token_type_ids.device
    return positions.to(device), next_pos.to(device)
