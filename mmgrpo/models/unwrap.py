"""The model under its wrappers: PEFT, DDP, DeepSpeed, FSDP. Attributes only (config, rope index,
vision tower); forwards always go through the wrapper the caller holds, so DDP synchronises
gradients and PEFT's adapters stay active (PEFT injects them into the modules themselves)."""
from __future__ import annotations

import inspect

import torch
from accelerate.utils import extract_model_from_parallel

# Attention implementations that accept an arbitrary 4-D additive mask; others (flash_attention_2,
# paged, ...) only take padding masks, so the shared-prefix row cannot be expressed for them.
MASK_4D_IMPLEMENTATIONS = ("sdpa", "eager")


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The `...ForConditionalGeneration` module under any PEFT / DDP / DeepSpeed / FSDP wrapper."""
    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    return base_model(model).model.visual


def attn_implementation(model: torch.nn.Module) -> str:
    """The language model's attention implementation (the one a 4-D mask would go to)."""
    return str(base_model(model).config.get_text_config()._attn_implementation)


def supports_4d_mask(model: torch.nn.Module) -> bool:
    return attn_implementation(model) in MASK_4D_IMPLEMENTATIONS


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The language model's dtype (the one its attention masks must have)."""
    return base_model(model).get_input_embeddings().weight.dtype


def wide(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 for softmax / sampling arithmetic: bf16 / fp16 are upcast, a float64 model
    stays float64 (the equivalence tests run one)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword of the KV cache: `cache` since transformers 5.24 (`past_key_values` is
    deprecated there), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(base_model(model).forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache of a forward's output, under either name."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.get("past_key_values")
