"""`mmgrpo infer`: one question about videos / images, answered greedily, for a quick look after
training. Prompts go through the same `PromptEncoder` as training (frame sampling, pixel budget,
chat template), so the model sees its questions the way it was trained on them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from transformers import GenerationConfig

from mmgrpo.config import VisionConfig
from mmgrpo.models.export import ExportError, Loaded, inspect_checkpoint, load_checkpoint, load_vl_model, resolve_dtype
from mmgrpo.models.loading import bad_words_ids, load_processor
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.sample import Media, PromptInputs, Sample


@dataclass
class InferRequest:
    model: str | None  # model folder, hub id or checkpoint; None = the adapter's base
    media: list[tuple[Literal["image", "video"], str]]  # in prompt order
    question: str
    adapter: str | None = None
    system_prompt: str | None = None
    max_new_tokens: int = 256
    dtype: str = "auto"
    device: str = "cpu"
    vision: VisionConfig = field(default_factory=VisionConfig)


def load_model(model: str | None, adapter: str | None, dtype: str, device: str) -> Loaded:
    """Base + adapter, a checkpoint folder (adapter or full weights), or a plain folder / hub id."""
    if adapter is not None:
        info = inspect_checkpoint(adapter)
        if info.kind != "adapter":
            raise ExportError(f"--adapter {adapter} holds full weights; pass it as --model")
        return load_checkpoint(info, model, dtype, device)
    if model is None:
        raise ExportError("pass --model (a model folder, hub id or checkpoint) or --adapter")
    if Path(model).is_dir():
        return load_checkpoint(inspect_checkpoint(model), None, dtype, device)
    dtype = resolve_dtype(dtype, model)  # a hub id
    return Loaded(load_vl_model(model, dtype, device), load_processor(model), None, None, dtype)


def build_sample(req: InferRequest) -> Sample:
    """Media placeholders first, in command-line order, then the question (Qwen's convention)."""
    content = [{"type": kind} for kind, _ in req.media] + [{"type": "text", "text": req.question}]
    prompt = [{"role": "user", "content": content}]
    if req.system_prompt:
        prompt.insert(0, {"role": "system", "content": req.system_prompt})
    media = [Media(kind=kind, source=str(Path(path).resolve())) for kind, path in req.media]
    return Sample(id="infer", prompt=prompt, media=media, answer=None, problem_type="free_text")


@torch.no_grad()
def greedy_ids(model: torch.nn.Module, processor, prompt: PromptInputs, max_new_tokens: int) -> torch.Tensor:
    """Completion token ids [C], plain greedy. Every option is explicit: the checkpoint's
    generation_config.json may sample or penalise repetition (Qwen2.5-VL: repetition_penalty=1.05)."""
    tok = processor.tokenizer
    eos = getattr(model.generation_config, "eos_token_id", None) or tok.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        bad_words_ids=bad_words_ids(processor),  # a sampled vision placeholder breaks the forward
    )
    device = next(model.parameters()).device
    prompt = prompt.to(device)
    out = model.generate(
        input_ids=prompt.input_ids,
        attention_mask=torch.ones_like(prompt.input_ids),
        mm_token_type_ids=prompt.mm_token_type_ids,
        generation_config=config,
        **prompt.vision.as_kwargs(),
    )
    return out[0, prompt.length :]


def greedy_answer(model: torch.nn.Module, processor, prompt: PromptInputs, max_new_tokens: int) -> str:
    ids = greedy_ids(model, processor, prompt, max_new_tokens)
    return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def answer(req: InferRequest, log: Callable[[str], None] = print) -> str:
    if not req.media:
        raise ExportError("pass at least one --video or --image")
    for _, path in req.media:
        if not Path(path).is_file():
            raise ExportError(f"{path}: no such file")
    loaded = load_model(req.model, req.adapter, req.dtype, req.device)
    for note in loaded.notes:
        log(f"note: {note}")
    prompt = PromptEncoder(loaded.processor, req.vision).encode(build_sample(req))
    return greedy_answer(loaded.model, loaded.processor, prompt, req.max_new_tokens)
