"""Text-only chat generation with any causal LM or vision-language folder: the local backend of the
LLM judge (trainer/judge.py) and of the tests' OpenAI-compatible judge server.

A folder loads as a causal LM when transformers has one for its config, else as an image-text-to-text
model (Qwen2.5-VL and the other VLMs answer text-only prompts too); missing, unexpected or mismatched
keys are refused as `load_model` refuses them. Generation is greedy at temperature 0; every option
is explicit (a checkpoint's generation_config.json would otherwise add its own penalties and
top-k), and vision placeholders are never sampled (a text-only forward cannot take them).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
from transformers import GenerationConfig as HFGenerationConfig

from mmgrpo.models.loading import DTYPES, LoadError
from mmgrpo.models.special import SpecialIds, special_ids


@dataclass(frozen=True)
class TextModel:
    model: torch.nn.Module
    tokenizer: object
    special: SpecialIds

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_text_model(name_or_path: str | Path, dtype: str, device: str | torch.device,
                    trust_remote_code: bool = False) -> TextModel:
    config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    auto = AutoModelForCausalLM if type(config) in AutoModelForCausalLM._model_mapping else AutoModelForImageTextToText
    model, info = auto.from_pretrained(str(name_or_path), dtype=DTYPES[dtype], output_loading_info=True,
                                       trust_remote_code=trust_remote_code)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')}: {', '.join(sorted(map(str, v))[:5])}" for k, v in bad.items())
        raise LoadError(f"{name_or_path} does not load cleanly as {type(model).__name__}: {detail}")
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    model = model.to(device).eval()
    return TextModel(model, tokenizer, special_ids(model, tokenizer))


def chat_text(tm: TextModel, prompt: str) -> str:
    """The prompt as one user turn of the model's chat template (as is when it has none)."""
    if getattr(tm.tokenizer, "chat_template", None):
        return tm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate_replies(tm: TextModel, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                     seed: int = 0) -> list[str]:
    """One reply per prompt, all prompts in one left-padded `generate` call."""
    if not prompts:
        return []
    batch = tm.tokenizer([chat_text(tm, p) for p in prompts], return_tensors="pt", padding=True,
                         add_special_tokens=False).to(tm.device)
    sample = temperature > 0
    config = HFGenerationConfig(
        do_sample=sample, temperature=temperature if sample else None, top_k=0 if sample else None,
        top_p=1.0 if sample else None, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=list(tm.special.eos), pad_token_id=tm.special.pad,
        bad_words_ids=[[t] for t in tm.special.banned] or None, use_cache=True,
    )
    rng = torch.random.fork_rng(devices=[tm.device] if tm.device.type == "cuda" else []) if sample else contextlib.nullcontext()
    with rng:
        if sample:
            torch.manual_seed(seed)
        out = tm.model.generate(**batch, generation_config=config)  # [n, P + C]
    new = out[:, batch["input_ids"].shape[1]:]  # [n, C]
    eos = tm.special.eos_tensor(new.device)
    replies = []
    for row in new:
        stop = torch.isin(row, eos).nonzero()
        replies.append(tm.tokenizer.decode(row[: int(stop[0]) if len(stop) else len(row)], skip_special_tokens=True))
    return replies
