"""The model families mmgrpo supports, as one table of what differs between them.

A family is a row of `FAMILIES`, keyed by the `model_type` of the checkpoint's config.json; every
part of the model layer that depends on the family reads its row (never its name):

- `grid`: patch size, spatial merge and temporal patch (pixel budgets snap to patch * merge);
- `video_time`: how a video's frames are placed in time in the mRoPE positions (models.positions):
  `index` (Qwen2-VL: temporal patch k at k), `seconds` (Qwen2.5-VL: at k * second_per_grid *
  tokens_per_second), `timestamps` (Qwen3-VL, Qwen3.5: every temporal patch is its own vision block,
  preceded by its time written as text, "<1.2 seconds>");
- `shared_prefix`: how one encoded prompt serves the G completions of a group in the log-prob
  forward (models.logprobs): `mask`, one row [prompt | c_1 | ... | c_G] with a 4-D mask in which
  each completion sees the prompt and itself; `cache`, the prompt run once (with gradients) and the
  G completions continued from its repeated cache and recurrent state, for families with
  linear-attention layers (Qwen3.5's gated delta-net), where no mask can stop a recurrent state
  from carrying one completion into the next;
- `lora_targets`: the language-model projections LoRA goes on by default (Qwen3.5's linear-attention
  layers have their own), `expert_parameters`: the fused MoE expert weights (LoRA on them only with
  `lora.experts=true`), `router`: the MoE router module (its load-balancing loss: models.moe).

Qwen3-VL's deepstack features (vision features added to the first decoder layers) need no entry:
the vision tower's output carries them and `models.vision` hands them on with the pooled features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mmgrpo.models.unwrap import base_model
from mmgrpo.processors.budget import Grid

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEAR_ATTENTION = ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj")  # Qwen3.5's gated delta-net
EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")  # fused [experts, out, in] weights


@dataclass(frozen=True)
class Family:
    name: str  # config.json's model_type
    title: str  # how people write it
    model_class: str  # the transformers class a checkpoint of this family loads as
    processor_class: str
    grid: Grid
    video_time: Literal["index", "seconds", "timestamps"]
    shared_prefix: Literal["mask", "cache"]
    lora_targets: tuple[str, ...]  # module names (last path component) in the language model
    expert_parameters: tuple[str, ...] = ()  # parameter paths (suffixes) of fused MoE experts
    router: str | None = None  # module path suffix of the MoE router; None for dense models

    @property
    def moe(self) -> bool:
        return self.router is not None


PATCH14, PATCH16 = Grid(patch=14, merge=2, temporal=2), Grid(patch=16, merge=2, temporal=2)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("qwen2_vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", PATCH14,
           video_time="index", shared_prefix="mask", lora_targets=ATTENTION + MLP),
    Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", PATCH14,
           video_time="seconds", shared_prefix="mask", lora_targets=ATTENTION + MLP),
    Family("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", PATCH16,
           video_time="timestamps", shared_prefix="mask", lora_targets=ATTENTION + MLP),
    Family("qwen3_vl_moe", "Qwen3-VL-MoE", "Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor", PATCH16,
           video_time="timestamps", shared_prefix="mask", lora_targets=ATTENTION, expert_parameters=EXPERTS,
           router="mlp.gate"),
    Family("qwen3_5", "Qwen3.5", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", PATCH16,
           video_time="timestamps", shared_prefix="cache", lora_targets=ATTENTION + LINEAR_ATTENTION + MLP),
    Family("qwen3_5_moe", "Qwen3.5-MoE", "Qwen3_5MoeForConditionalGeneration", "Qwen3VLProcessor", PATCH16,
           video_time="timestamps", shared_prefix="cache", lora_targets=ATTENTION + LINEAR_ATTENTION + MLP,
           expert_parameters=EXPERTS, router="mlp.gate"),
)}


class UnsupportedFamily(ValueError):
    """A checkpoint whose model_type no row of FAMILIES describes."""


def supported() -> str:
    return ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise UnsupportedFamily(f"unknown model family {name!r}; supported: {supported()}")
    return FAMILIES[name]


def family_of_config(config, where: str = "the model") -> Family:
    """The family of a transformers config (its `model_type`, as config.json writes it)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedFamily(f"{where} has model_type {model_type!r}, which mmgrpo does not support; "
                                f"supported: {supported()}")
    return FAMILIES[model_type]


def family_of(model: torch.nn.Module) -> Family:
    """The family of a loaded model, under any PEFT / DDP / FSDP wrapper."""
    return family_of_config(base_model(model).config)
