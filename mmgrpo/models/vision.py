"""The vision tower, once per prompt: every image and video of a batch in one tower call, and the
features handed to as many rows as need them (G rows per prompt in the repeat layout) without
running the tower again. Gradients of all those rows sum into the one tower output.

What the tower returns per item is the pooled (merged) features and, in Qwen3-VL, its deepstack
features (one tensor per deepstack layer, added to the hidden states of the first decoder layers at
the item's placeholders). Both travel together, item by item, so a forward that receives encoder
outputs injects exactly what a plain forward with pixel values would."""
from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmgrpo.models.unwrap import base_model
from mmgrpo.processors.sample import PromptInputs, VisionInputs

Encoded = dict[str, BaseModelOutputWithPooling]  # "image" / "video" -> one output holding each media item


def select_items(output: BaseModelOutputWithPooling, order: list[int]) -> BaseModelOutputWithPooling:
    """The items `order` (indices, repeats allowed) of a per-item tower output: pooled features and,
    where the family has them, deepstack features, in the output's own class."""
    fields = {"pooler_output": tuple(output.pooler_output[i] for i in order)}  # n x [tokens, H]
    deep = getattr(output, "deepstack_features", None)
    if deep is not None:
        fields["deepstack_features"] = [tuple(layer[i] for i in order) for layer in deep]  # layers x n x [tokens, H]
    return type(output)(**fields)


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
    features = base_model(model).model.get_image_features(pixels, grids, return_dict=True)  # split per item
    out, start = {}, 0
    for kind, _, grid in parts:
        n = int(grid.shape[0])
        out[kind] = select_items(features, list(range(start, start + n)))
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
        order, start = [], 0
        for prompt in prompts:
            n = media_counts(prompt)[kind]
            order += list(range(start, start + n)) * G
            start += n
        out[kind] = select_items(enc, order)
    return out
