"""An independent implementation of the mRoPE positions the Qwen-VL families were pretrained with,
written after the original code (transformers 4.49's Qwen2-VL / Qwen2.5-VL `get_rope_index`, which
vLLM follows, and 4.57's Qwen3-VL one): it finds vision blocks by scanning the token ids for the
image / video placeholders (not by token types, as mmgrpo.models.positions does), and places each
text run after the previous block's largest position + 1.

`full_sequence_positions` extends a prompt's positions over appended completion tokens (1-D, on
all three axes), for the plain full-sequence forwards the equivalence tests compare against."""
from __future__ import annotations

import torch


def _grid_list(family_video_time: str, video_grid_thw):
    if video_grid_thw is None:
        return []
    grids = video_grid_thw.tolist()
    if family_video_time == "timestamps":  # Qwen3-VL: one block per temporal patch, t = 1
        return [[1, h, w] for t, h, w in grids for _ in range(t)]
    return grids


def original_positions(config, video_time: str, input_ids: torch.Tensor, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None) -> torch.Tensor:
    """[3, n] positions of one unpadded prompt `input_ids` [n] (or [1, n])."""
    tokens = input_ids.view(-1).tolist()
    merge = config.vision_config.spatial_merge_size
    tps = getattr(config.vision_config, "tokens_per_second", None)
    images = [] if image_grid_thw is None else image_grid_thw.tolist()
    videos = _grid_list(video_time, video_grid_thw)
    per_video_seconds = [] if second_per_grid_ts is None else list(second_per_grid_ts)
    if video_time == "timestamps":
        per_video_seconds = []
    image_id, video_id = config.image_token_id, config.video_token_id
    parts, st, i_img, i_vid = [], 0, 0, 0
    for _ in range(len(images) + len(videos)):
        ed_image = tokens.index(image_id, st) if i_img < len(images) else len(tokens) + 1
        ed_video = tokens.index(video_id, st) if i_vid < len(videos) else len(tokens) + 1
        if ed_image < ed_video:
            t, h, w = images[i_img]
            seconds, ed = torch.tensor(0.0), ed_image
            i_img += 1
        else:
            t, h, w = videos[i_vid]
            seconds = per_video_seconds[i_vid] if per_video_seconds else torch.tensor(1.0)
            ed = ed_video
            i_vid += 1
        gt, gh, gw = t, h // merge, w // merge
        text_len = ed - st
        st_idx = int(parts[-1].max()) + 1 if parts else 0
        parts.append(torch.arange(text_len).view(1, -1).expand(3, -1) + st_idx)
        expanded = torch.arange(gt).view(-1, 1).expand(-1, gh * gw)
        if video_time == "seconds":
            t_index = (expanded * seconds * tps).long().flatten()
        else:
            t_index = expanded.flatten()
        h_index = torch.arange(gh).view(1, -1, 1).expand(gt, -1, gw).flatten()
        w_index = torch.arange(gw).view(1, 1, -1).expand(gt, gh, -1).flatten()
        parts.append(torch.stack([t_index, h_index, w_index]) + text_len + st_idx)
        st = ed + gt * gh * gw
    if st < len(tokens):
        st_idx = int(parts[-1].max()) + 1 if parts else 0
        parts.append(torch.arange(len(tokens) - st).view(1, -1).expand(3, -1) + st_idx)
    return torch.cat(parts, dim=1)


def prompt_positions(model, prompt) -> torch.Tensor:
    """[3, P] original-rule positions of a `PromptInputs` for `model` (its family by model_type)."""
    from mmgrpo.models.families import family_of

    v = prompt.vision
    return original_positions(model.config, family_of(model).video_time, prompt.input_ids, v.image_grid_thw,
                              v.video_grid_thw, v.second_per_grid_ts)


def full_sequence_positions(model, prompt, n_new: int) -> torch.Tensor:
    """[3, 1, P + n_new]: the prompt's positions, then the appended tokens 1-D after its largest."""
    pos = prompt_positions(model, prompt)  # [3, P]
    new = torch.arange(n_new).view(1, -1).expand(3, -1) + int(pos.max()) + 1  # [3, n_new]
    return torch.cat([pos, new], dim=1).unsqueeze(1)
