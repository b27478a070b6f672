"""The vision tower, once per prompt: every image and video of a batch in one tower call, and the
features handed to as many rows as need them (G rows per prompt in the repeat layout) without
running the tower again. Gradients of all those rows sum into the one tower output."""
from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmgrpo.models.unwrap import base_model
from mmgrpo.processors.sample import PromptInputs, VisionInputs

Encoded = dict[str, BaseModelOutputWithPooling]  # "image" / "video" -> one pooled output per media item


def encode_vision(model: torch.nn.Module, vision: VisionInputs) -> Encoded:
    """Every image and video in one vision-tower call, split back per item in the form the model's
    `mm_encoder_outputs` argument takes. Images and videos share the tower and the patch layout (an
    image is a 2-frame temporal patch), so they can be concatenated; the grids keep them apart. The
    tower treats each item separately (attention is split by item), so one call over all items gives
    each item the features its own call would."""
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


def media_counts(prompt: PromptInputs) -> dict[str, int]:
    v = prompt.vision
    return {
        "image": 0 if v.image_grid_thw is None else int(v.image_grid_thw.shape[0]),
        "video": 0 if v.video_grid_thw is None else int(v.video_grid_thw.shape[0]),
    }


def repeat_features(encoded: Encoded, prompts: list[PromptInputs], G: int) -> Encoded:
    """Encoder outputs for G rows per prompt: prompt b's items listed G times, so every row gets its
    own media in order while the tower ran once."""
    out = {}
    for kind, enc in encoded.items():
        per_prompt, start = [], 0
        for prompt in prompts:
            n = media_counts(prompt)[kind]
            per_prompt.append(tuple(enc.pooler_output[start : start + n]) * G)
            start += n
        out[kind] = BaseModelOutputWithPooling(pooler_output=sum(per_prompt, ()))
    return out
