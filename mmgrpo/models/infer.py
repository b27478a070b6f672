"""`mmgrpo infer`: one question about videos / images, answered greedily, for a quick look after
training. Prompts go through the same `PromptEncoder` as training (frame sampling, pixel budget,
chat template), so the model sees its questions the way it was trained on them; the answer comes
from the model layer's one HF-generate wrapper (every decoding option explicit)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from mmgrpo.config import VisionConfig
from mmgrpo.models.export import ExportError, Loaded, inspect_checkpoint, load_checkpoint, resolve_dtype
from mmgrpo.models.generate import Sampling, generate_texts
from mmgrpo.models.loading import LoadError, hub_or_folder, load_model, load_processor, model_location
from mmgrpo.models.special import special_ids
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.sample import Media, PromptInputs, Sample
from mmgrpo.parsers import infer_parser  # noqa: F401 (re-exported)


@dataclass(frozen=True)
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


def load_for_inference(model: str | None, adapter: str | None, dtype: str, device: str) -> Loaded:
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
    model = model_location(model)  # a hub id, or "no such folder"
    dtype = hub_or_folder(model, lambda name: resolve_dtype(dtype, name))
    return Loaded(load_model(model, dtype, device).eval(), load_processor(model), None, None, dtype)


def build_sample(req: InferRequest) -> Sample:
    """Media placeholders first, in command-line order, then the question (Qwen's convention)."""
    content = [{"type": kind} for kind, _ in req.media] + [{"type": "text", "text": req.question}]
    prompt = [{"role": "user", "content": content}]
    if req.system_prompt:
        prompt.insert(0, {"role": "system", "content": req.system_prompt})
    media = [Media(kind=kind, source=str(Path(path).resolve())) for kind, path in req.media]
    return Sample(id="infer", prompt=prompt, media=media, answer=None, problem_type="free_text")


@torch.no_grad()
def greedy_answer(model: torch.nn.Module, processor, prompt: PromptInputs, max_new_tokens: int) -> str:
    device = next(model.parameters()).device
    out = generate_texts(model, processor.tokenizer, special_ids(model, processor.tokenizer), [prompt.to(device)],
                         Sampling(max_new_tokens, temperature=0.0, top_p=1.0, top_k=0), num_samples=1, seed=None)
    return out.texts[0].strip()


def answer(req: InferRequest, log: Callable[[str], None] = print) -> str:
    if not req.media:
        raise ExportError("pass at least one --video or --image")
    for kind, path in req.media:
        if not (Path(path).is_file() or (kind == "video" and Path(path).is_dir())):  # a folder of frames, as in training
            raise ExportError(f"--{kind} {path}: no such file" + (" or folder of frames" if kind == "video" else ""))
    loaded = load_for_inference(req.model, req.adapter, req.dtype, req.device)
    for note in loaded.notes:
        log(f"note: {note}")
    prompt = PromptEncoder(loaded.processor, req.vision).encode(build_sample(req))
    return greedy_answer(loaded.model, loaded.processor, prompt, req.max_new_tokens)


# ----------------------------------------------------------------------------------------------
# `mmgrpo infer`. Exit codes: 0 ok, 1 failed, 2 bad arguments.


def infer_main(argv: list[str]) -> int:
    args = infer_parser().parse_args(argv)
    defaults = VisionConfig()
    vision = VisionConfig(fps=args.fps, nframes=args.nframes, max_frames=args.max_frames, max_pixels=args.max_pixels,
                          min_frames=min(defaults.min_frames, args.max_frames),
                          min_pixels=min(defaults.min_pixels, args.max_pixels))
    req = InferRequest(
        model=args.model, media=args.media, question=args.question, adapter=args.adapter, system_prompt=args.system,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, device=args.device, vision=vision,
    )
    try:
        print(answer(req, log=lambda note: print(note, file=sys.stderr)))
    except (LoadError, ValueError, OSError) as e:  # ValueError: BadSampleError / MediaError from the encoder
        print(f"mmgrpo infer: {e}", file=sys.stderr)
        return 1
    return 0
