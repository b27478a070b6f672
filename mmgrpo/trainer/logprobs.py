"""Per-token log-probs of a group's completions under a model (policy, reference or old policy).

Every path passes the prompt's vision inputs, so the vision tower runs in every call: a log-prob
forward without them scores a different input than the one generation saw (ALGORITHMS.md §7).

Modes:
- `shared` (default): one row `[prompt | c_1 | ... | c_G]` with a 4-D mask in which each completion
  sees the prompt and itself only. The prompt (vision tower included) is encoded once; its
  activations receive the gradient of all G completions, summed.
- `repeat`: G rows `[prompt | c_g]`, vision inputs repeated G times. The plain reference.
Attention implementations that cannot take a 4-D mask (flash_attention_2, ...) cannot express the
shared row; `shared` then falls back to G rows that reuse one vision-tower output.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmgrpo.processors.sample import PromptInputs
from mmgrpo.trainer.prefix import base_model, keep_lengths, prompt_positions, shared_row, supports_4d_mask

MODES = ("shared", "repeat")


def group_logprobs(
    model: torch.nn.Module,
    prompt: PromptInputs,
    completion_ids: Tensor,
    completion_mask: Tensor,
    mode: str = "shared",
    temperature: float = 1.0,
) -> Tensor:
    """Log-probs [G, C] (fp32) of `completion_ids` [G, C] given the prompt; 0 where `completion_mask`
    [G, C] is 0. Logits are divided by `temperature` before the softmax (TRL convention), so with the
    sampling temperature these are the log-probs of the distribution that was sampled (before top-k/p).
    Differentiable: call under `torch.no_grad()` for old/reference log-probs."""
    if mode not in MODES:
        raise ValueError(f"unknown log-prob mode {mode!r}; expected one of {MODES}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    if completion_ids.shape != completion_mask.shape:
        raise ValueError(
            f"completion_ids {tuple(completion_ids.shape)} != completion_mask {tuple(completion_mask.shape)}"
        )
    keep = keep_lengths(completion_mask)  # [G] long
    if int(keep.sum()) == 0:
        # nothing to score: no forward (the result carries no gradient)
        return torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
    if mode == "shared" and supports_4d_mask(model):
        out = _shared_forward(model, prompt, completion_ids, keep, temperature)
    else:
        out = _repeat_forward(model, prompt, completion_ids, keep, temperature, share_vision=(mode == "shared"))
    return out * completion_mask.to(out.dtype)


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float, chunk: int = 512) -> Tensor:
    """log softmax(logits / T)[target] in fp32 for logits [..., V] and targets [...]. Done in chunks
    of `chunk` tokens so that only a [chunk, V] fp32 copy of the logits exists at a time outside of
    autograd (V is ~152k for real models)."""
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [n, V]
    flat_targets = targets.reshape(-1)  # [n]
    out = []
    for start in range(0, flat_targets.numel(), chunk):
        scaled = flat_logits[start : start + chunk].float() / temperature  # [c, V] fp32
        picked = scaled.gather(-1, flat_targets[start : start + chunk, None]).squeeze(-1)  # [c]
        out.append(picked - torch.logsumexp(scaled, dim=-1))  # [c]
    return torch.cat(out).view(targets.shape)  # [...]


def _shared_forward(
    model: torch.nn.Module, prompt: PromptInputs, completion_ids: Tensor, keep: Tensor, temperature: float
) -> Tensor:
    positions, next_pos = prompt_positions(model, prompt)  # [3, 1, P], int
    dtype = base_model(model).get_input_embeddings().weight.dtype  # the language model's compute dtype
    row = shared_row(prompt, positions, next_pos, completion_ids, keep, dtype)
    # 3-row position_ids: no leading text-position row, which transformers only reads to detect
    # packed sequences when there is no mask; our 4-D mask is used as-is.
    logits = model(
        input_ids=row.input_ids,
        attention_mask=row.attention_mask,
        position_ids=row.position_ids,
        mm_token_type_ids=row.mm_token_type_ids,
        logits_to_keep=row.logit_index,  # only the N positions that predict completion tokens
        use_cache=False,
        **prompt.vision.as_kwargs(),
    ).logits  # [1, N, V]
    picked = token_logprobs(logits[0], row.targets, temperature)  # [N]
    out = torch.zeros(completion_ids.shape, dtype=torch.float32, device=picked.device)  # [G, C]
    return out.index_put((row.out_row, row.out_col), picked)


def _repeat_forward(
    model: torch.nn.Module,
    prompt: PromptInputs,
    completion_ids: Tensor,
    keep: Tensor,
    temperature: float,
    share_vision: bool,
) -> Tensor:
    """G rows `[prompt | c_g]`, right-padded (keep lengths), positions computed by the model itself.
    `share_vision`: run the vision tower once and hand each row the same features (gradients sum
    into that one output) instead of concatenating the pixels G times."""
    G, C = completion_ids.shape
    device = completion_ids.device
    input_ids = torch.cat([prompt.input_ids.expand(G, -1), completion_ids], dim=1)  # [G, P+C]
    comp_attn = torch.arange(C, device=device).view(1, -1) < keep.view(-1, 1)  # [G, C] bool
    prompt_attn = torch.ones_like(prompt.input_ids).expand(G, -1)  # [G, P]
    attention_mask = torch.cat([prompt_attn, comp_attn.long()], dim=1)  # [G, P+C]
    mm_types = torch.cat([prompt.mm_token_type_ids, prompt.mm_token_type_ids.new_zeros(1, C)], dim=1)  # [1, P+C]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_types.expand(G, -1),
        logits_to_keep=C + 1,  # prompt's last position .. second-to-last completion position (+1 dropped)
        use_cache=False,
        **_repeated_vision(model, prompt, G, share_vision),
    ).logits[:, :-1]  # [G, C, V]
    return token_logprobs(logits, completion_ids, temperature)  # [G, C]


def _repeated_vision(model: torch.nn.Module, prompt: PromptInputs, G: int, share_vision: bool) -> dict:
    """Vision kwargs for G rows. Each row needs its whole media list in order: [A, B, A, B, ...]."""
    v = prompt.vision
    kw: dict = {}
    for grid_key in ("image_grid_thw", "video_grid_thw"):
        if getattr(v, grid_key) is not None:
            kw[grid_key] = getattr(v, grid_key).repeat(G, 1)  # [G * n, 3]
    if v.second_per_grid_ts is not None:
        kw["second_per_grid_ts"] = v.second_per_grid_ts.repeat(G)  # [G * n_videos]
    if not share_vision:
        if v.pixel_values is not None:
            kw["pixel_values"] = v.pixel_values.repeat(G, 1)  # [G * patches, D]
        if v.pixel_values_videos is not None:
            kw["pixel_values_videos"] = v.pixel_values_videos.repeat(G, 1)  # [G * patches, D]
        return kw
    inner = base_model(model).model
    encoded = {}
    if v.pixel_values is not None:
        encoded["image"] = inner.get_image_features(v.pixel_values, v.image_grid_thw, return_dict=True)
    if v.pixel_values_videos is not None:
        encoded["video"] = inner.get_video_features(v.pixel_values_videos, v.video_grid_thw, return_dict=True)
    # one encoder output per media item; the same tensors listed G times
    kw["mm_encoder_outputs"] = {
        k: BaseModelOutputWithPooling(pooler_output=tuple(out.pooler_output) * G) for k, out in encoded.items()
    }
    return kw
