"""Batched generation for evaluation: several prompts, left-padded into one `generate` call.

Left padding keeps every prompt's last token in the last column, so the new tokens of all rows line
up; Qwen2.5-VL's mRoPE positions skip the padding through the attention mask, so a padded row
decodes exactly as it would alone (tested against batch size 1).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mmgrpo.models.loading import bad_words_ids
from mmgrpo.processors.sample import PromptInputs, VisionInputs


@dataclass
class PromptBatch:
    input_ids: Tensor  # [B, P] long, left-padded with the pad id
    attention_mask: Tensor  # [B, P] long, 0 on padding
    mm_token_type_ids: Tensor  # [B, P] int, 0 on padding
    vision: VisionInputs  # every row's media, concatenated in row order

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PromptBatch":
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.mm_token_type_ids.to(device),
            self.vision.to(device, dtype),
        )


@dataclass
class SamplingSettings:
    max_new_tokens: int
    num_samples: int = 1  # K completions per prompt; 1 = greedy
    temperature: float = 1.0  # only when K > 1
    seed: int = 0  # sampling seed (K > 1), applied inside a forked RNG


@dataclass
class Completions:
    texts: list[str]  # [B*K] decoded, special tokens skipped; rows i*K .. i*K+K-1 belong to prompt i
    num_tokens: list[int]  # [B*K] generated tokens before the first EOS
    seconds: float  # wall time of the generate call


def _cat(parts: list[Tensor | None]) -> Tensor | None:
    present = [p for p in parts if p is not None]
    return torch.cat(present) if present else None


def collate_prompts(prompts: list[PromptInputs], pad_id: int, repeat: int = 1) -> PromptBatch:
    """Left-pad `prompts` into one batch; each prompt appears `repeat` times in a row (K samples).
    Vision tensors are concatenated in the same row order, which is the order the model assigns
    them to placeholder tokens."""
    rows = [p for p in prompts for _ in range(repeat)]
    width = max(p.length for p in rows)
    ids, mask, kinds = [], [], []
    for p in rows:
        pad = width - p.length
        ids.append(torch.cat([torch.full((pad,), pad_id, dtype=p.input_ids.dtype), p.input_ids[0]]))  # [P]
        mask.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(p.length, dtype=torch.long)]))  # [P]
        kinds.append(torch.cat([torch.zeros(pad, dtype=p.mm_token_type_ids.dtype), p.mm_token_type_ids[0]]))  # [P]
    videos = [p.vision for p in rows if p.vision.video_grid_thw is not None]
    if any(v.second_per_grid_ts is None for v in videos) and any(v.second_per_grid_ts is not None for v in videos):
        raise ValueError("some videos in the batch have second_per_grid_ts and some do not; encode them alike")
    vision = VisionInputs(
        pixel_values=_cat([p.vision.pixel_values for p in rows]),  # [sum patches, D]
        image_grid_thw=_cat([p.vision.image_grid_thw for p in rows]),  # [n_images, 3]
        pixel_values_videos=_cat([p.vision.pixel_values_videos for p in rows]),  # [sum patches, D]
        video_grid_thw=_cat([p.vision.video_grid_thw for p in rows]),  # [n_videos, 3]
        second_per_grid_ts=_cat([p.vision.second_per_grid_ts for p in rows]),  # [n_videos]
    )
    return PromptBatch(torch.stack(ids), torch.stack(mask), torch.stack(kinds), vision)


def eos_ids(model: torch.nn.Module, processor) -> list[int]:
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return eos or [processor.tokenizer.eos_token_id]


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def generate_batch(model: torch.nn.Module, processor, prompts: list[PromptInputs], s: SamplingSettings) -> Completions:
    """Greedy (K = 1) or K sampled completions for each prompt, in one `generate` call."""
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids(model, processor)[0]
    device = next(model.parameters()).device
    batch = collate_prompts(prompts, pad_id, repeat=s.num_samples).to(device, _model_dtype(model))
    eos = eos_ids(model, processor)
    sample = s.num_samples > 1
    # every decoding knob explicit: a checkpoint's generation_config.json may sample, truncate
    # (top_k / top_p) or penalise repetition (Qwen2.5-VL ships repetition_penalty=1.05)
    knobs = dict(do_sample=True, temperature=s.temperature, top_p=1.0, top_k=0) if sample else dict(do_sample=False)
    knobs["repetition_penalty"] = 1.0
    # sampling must not move the caller's RNG (the trainer evaluates mid-run), and must be repeatable
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if sample else contextlib.nullcontext()
    t0 = time.perf_counter()
    with rng, torch.no_grad():
        if sample:
            torch.manual_seed(s.seed)
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=batch.mm_token_type_ids,
            **batch.vision.as_kwargs(),
            max_new_tokens=s.max_new_tokens,
            bad_words_ids=bad_words_ids(processor),
            eos_token_id=eos,
            pad_token_id=pad_id,
            use_cache=True,  # a training model has it off for gradient checkpointing
            # never wait for other processes: under FSDP / ZeRO-3 transformers would otherwise sync
            # every decoding step, though the trainer gathers the parameters first and sharded
            # evaluation gives processes different numbers of batches to generate
            synced_gpus=False,
            **knobs,
        )  # [B*K, P + C]
    seconds = time.perf_counter() - t0
    new = out[:, batch.input_ids.shape[1]:].cpu()  # [B*K, C]
    is_eos = torch.isin(new, torch.tensor(eos))  # [B*K, C]
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((new.shape[0],), new.shape[1]))  # [B*K]
    texts = [tok.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, lengths.tolist())]
    return Completions(texts=texts, num_tokens=lengths.tolist(), seconds=seconds)
