"""A loaded model made ready to train: LoRA through PEFT (language model only by default, on the
projections the family has), the vision tower frozen, fp16 master weights, gradient checkpointing."""
from __future__ import annotations

import contextlib
import re
import warnings
from typing import Iterator

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedModel

from mmgrpo.config import LoraConfig, ModelConfig
from mmgrpo.models.families import Family, family_of
from mmgrpo.models.unwrap import vision_tower


def freeze_vision(model: torch.nn.Module) -> None:
    for p in vision_tower(model).parameters():
        p.requires_grad_(False)


def vision_linears(model: torch.nn.Module) -> tuple[str, ...]:
    """Full paths of every nn.Linear in the vision tower: its blocks and its merger (the aligner
    into the language model's width), as ms-swift's `all-linear` with freeze_vit / freeze_aligner off."""
    tower = vision_tower(model)
    prefix = next(name for name, m in model.named_modules() if m is tower)
    return tuple(f"{prefix}.{name}" for name, m in tower.named_modules() if isinstance(m, torch.nn.Linear))


def lora_target_regex(modules: tuple[str, ...], vision: tuple[str, ...]) -> str:
    """PEFT full-match regex: the language model's `modules` (by last name) and the vision tower's
    linears `vision` (full paths; empty = a frozen tower). The tower's blocks share names
    (`gate_proj`, ...) with the language model, so the names alone are matched outside it only."""
    names = "|".join(sorted(set(modules)))
    language = rf"(?!.*visual).*\.({names})"
    return rf"^({language}|{'|'.join(re.escape(v) for v in vision)})$" if vision else rf"^{language}$"


def language_linears(model: torch.nn.Module) -> set[str]:
    """Names (last path component) of the language model's nn.Linear modules, lm_head excluded."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "visual" not in name and not name.endswith("lm_head")}


def lora_targets(model: torch.nn.Module, cfg: LoraConfig, family: Family) -> tuple[tuple[str, ...], list[str]]:
    """(module names, expert parameter paths) LoRA goes on: `cfg.target_modules` or the family's own
    list, every name checked against the model (a name that matches nothing would train nothing)."""
    modules = cfg.target_modules or family.lora_targets
    have = language_linears(model)
    missing = sorted(set(modules) - have)
    if missing:
        raise ValueError(f"lora.target_modules {missing} match no linear layer of this {family.title} language "
                         f"model; it has {sorted(have)}")
    if cfg.experts and not family.expert_parameters:
        raise ValueError(f"lora.experts=true, but {family.title} is not a mixture-of-experts model")
    return tuple(modules), list(family.expert_parameters) if cfg.experts else []


def apply_lora(model: PreTrainedModel, cfg: LoraConfig, train_vision: bool) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    modules, experts = lora_targets(model, cfg, family_of(model))
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_regex(modules, vision_linears(model) if train_vision else ()),
        target_parameters=experts or None,  # fused [experts, out, in] weights, wrapped by PEFT's ParamWrapper
        task_type="CAUSAL_LM",
    )
    with quiet_peft_wrap():
        return get_peft_model(model, peft_cfg)


def prepare_policy(model: torch.nn.Module, model_cfg: ModelConfig, lora_cfg: LoraConfig) -> torch.nn.Module:
    """Loaded model -> (new LoRA when lora_cfg.enabled) -> frozen vision tower -> gradient
    checkpointing, ready to train. A model that already carries a (trainable) adapter keeps it."""
    family = family_of(model)
    if model_cfg.router_aux_loss_coef and not family.moe:
        raise ValueError(f"model.router_aux_loss_coef={model_cfg.router_aux_loss_coef}, but {family.title} has no "
                         "experts (no router to balance): set it to 0")
    if lora_cfg.enabled:
        model = apply_lora(model, lora_cfg, train_vision=not model_cfg.freeze_vision)
    if model_cfg.freeze_vision:
        freeze_vision(model)
    if model_cfg.dtype == "fp16":  # mixed precision: fp16 autocast + loss scaling over fp32 master weights
        for p in trainable_parameters(model):
            p.data = p.data.float()
    if model_cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x: the old name warns on every run
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "peft_config"):
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def quiet_peft_wrap():
    """PEFT (0.21) reads `model.is_gradient_checkpointing` when it wraps a model, a name transformers
    5.x deprecated: a FutureWarning on every run that is neither ours nor the user's to fix. Only
    that warning is silenced, only while PEFT wraps."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as (Hugging Face checkpoint name, tensor), LoRA deltas merged in (W + B A
    * scale, PEFT's own `get_delta_weight`). Lazily, one merged layer at a time (a rollout engine's
    sync then holds one extra layer, not a second model), and aside: the model is left exactly as it
    was (merge_adapter / unmerge_adapter would round the base weights)."""
    from peft.tuners.lora import LoraLayer

    model = extract_model_from_parallel(model)
    if not hasattr(model, "get_base_model"):  # full fine-tuning: the weights as they are
        yield from ((name, t.detach()) for name, t in model.state_dict().items())
        return
    adapted = {f"{name}.base_layer.weight": m for name, m in model.named_modules()
               if isinstance(m, LoraLayer) and not m.disable_adapters}
    merged = set()
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            continue
        value = t.detach()
        if name in adapted:
            m = adapted[name]
            for adapter in (a for a in m.active_adapters if a in m.lora_A):
                value = value + m.get_delta_weight(adapter).detach().to(t.dtype)
            merged.add(name)
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), value
    if merged != set(adapted):  # e.g. adapters on fused expert parameters, which hold no `base_layer.weight`
        raise RuntimeError(f"LoRA merge: no base weight for the adapted layers {sorted(set(adapted) - merged)[:3]}")
