"""Load a Qwen2.5-VL-style model (hub id or local folder), add LoRA through PEFT, freeze the vision
tower, and give access to the reference policy.

The same code path serves the tiny test model and real checkpoints; `trust_remote_code` stays off
unless the config turns it on.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from mmgrpo.config import LoraConfig, ModelConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Vision placeholder tokens: never sampled (ALGORITHMS.md §7), a sampled one breaks the next forward.
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def load_processor(name_or_path: str, trust_remote_code: bool = False) -> ProcessorMixin:
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    processor.tokenizer.padding_side = "left"  # generation pads on the left
    return processor


def load_base_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> PreTrainedModel:
    """The vision-language class (never the text-only one), in the configured dtype. Missing
    weights are an error: transformers would otherwise initialise them randomly and say little."""
    model, info = AutoModelForImageTextToText.from_pretrained(
        cfg.name_or_path,
        dtype=DTYPES[cfg.dtype],
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        output_loading_info=True,
    )
    if info["missing_keys"]:
        keys = sorted(info["missing_keys"])
        raise ValueError(f"{cfg.name_or_path}: {len(keys)} weights missing from the checkpoint, e.g. {keys[:3]}")
    return model.to(device)


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder of a (possibly PEFT-wrapped) Qwen2.5-VL model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.visual


def freeze_vision(model: torch.nn.Module) -> None:
    for p in vision_tower(model).parameters():
        p.requires_grad_(False)


def lora_target_regex(modules: list[str], include_vision: bool) -> str:
    """PEFT full-match regex. The vision tower's blocks share names (`gate_proj`, ...) with the
    language model, so a plain list would put adapters on a frozen tower; exclude it by path."""
    names = "|".join(sorted(set(modules)))
    if include_vision:
        return rf".*\.({names}|qkv|attn\.proj)$"
    return rf"^(?!.*visual).*\.({names})$"


def apply_lora(model: PreTrainedModel, cfg: LoraConfig, train_vision: bool) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_regex(cfg.target_modules, include_vision=train_vision),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def prepare_policy(
    model_cfg: ModelConfig, lora_cfg: LoraConfig, device: str | torch.device = "cpu", model: PreTrainedModel | None = None
) -> torch.nn.Module:
    """Base model -> (LoRA) -> frozen vision tower -> gradient checkpointing, ready to train."""
    model = model if model is not None else load_base_model(model_cfg, device)
    if lora_cfg.enabled:
        model = apply_lora(model, lora_cfg, train_vision=not model_cfg.freeze_vision)
    if model_cfg.freeze_vision:
        freeze_vision(model)
    if model_cfg.dtype == "fp16":  # mixed precision: fp16 autocast + loss scaling over fp32 master weights
        for p in trainable_parameters(model):
            p.data = p.data.float()
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora_cfg.enabled:
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


@dataclass
class Reference:
    """The reference policy pi_ref. LoRA: the same module with adapters disabled (no second copy);
    full fine-tuning: a frozen copy taken before training."""

    policy: torch.nn.Module
    frozen_copy: torch.nn.Module | None

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        if self.frozen_copy is not None:
            yield self.frozen_copy
            return
        with self.policy.disable_adapter():
            yield self.policy


def make_reference(policy: torch.nn.Module, beta: float) -> Reference | None:
    """None when beta = 0: the reference forward is skipped entirely."""
    if beta == 0:
        return None
    if hasattr(policy, "disable_adapter"):
        return Reference(policy, None)
    frozen = copy.deepcopy(policy).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return Reference(policy, frozen)


def bad_words_ids(processor: ProcessorMixin) -> list[list[int]]:
    """Token ids generation must never produce (vision placeholders)."""
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return [[i] for i in ids if i is not None and i != tok.unk_token_id]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_processor_files(processor: ProcessorMixin, out_dir) -> None:
    """Every file a loader may look for: transformers 5 writes one `processor_config.json`; older
    loaders and serving engines read `preprocessor_config.json` and `video_preprocessor_config.json`,
    whose absence is a common cause of 'LoRA will not load' reports, so write them too."""
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    if getattr(processor, "video_processor", None) is not None:
        processor.video_processor.save_pretrained(out_dir)
