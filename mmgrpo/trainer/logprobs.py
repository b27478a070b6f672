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

`batch_logprobs` scores all B groups of a step in one forward: B shared rows (or B*G repeated rows),
the media of every prompt through the vision tower in one call.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmgrpo.eval.generate import collate_prompts
from mmgrpo.processors.sample import PromptInputs
from mmgrpo.trainer.batched import (
    encode_vision,
    filler_token,
    group_size,
    left_pad,
    media_counts,
    repeat_features,
    shared_rows,
)
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


def batch_logprobs(
    model: torch.nn.Module,
    prompts: list[PromptInputs],
    completion_ids: list[Tensor],
    completion_masks: list[Tensor],
    mode: str = "shared",
    temperature: float = 1.0,
) -> list[Tensor]:
    """`group_logprobs` for B groups in one forward: B x [G, C_b] (fp32), 0 where the mask is 0.

    `shared`: B rows `[prompt_b | c_b1 | ... | c_bG]` (each group's shared-prefix row, right-padded),
    with every image and video of the batch through the vision tower in one call. Without 4-D mask
    support (flash_attention_2, ...) it falls back to B*G padded rows that reuse that one tower call.
    `repeat`: B*G rows `[prompt_b | c_bg]`, vision inputs repeated per row (the baseline)."""
    if mode not in MODES:
        raise ValueError(f"unknown log-prob mode {mode!r}; expected one of {MODES}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    if not (len(prompts) == len(completion_ids) == len(completion_masks)):
        raise ValueError(f"{len(prompts)} prompts, {len(completion_ids)} completion_ids, {len(completion_masks)} masks")
    for b, (ids, mask) in enumerate(zip(completion_ids, completion_masks)):
        if ids.shape != mask.shape:
            raise ValueError(f"group {b}: completion_ids {tuple(ids.shape)} != completion_mask {tuple(mask.shape)}")
    keeps = [keep_lengths(m) for m in completion_masks]  # B x [G] long
    out = [torch.zeros(ids.shape, dtype=torch.float32, device=ids.device) for ids in completion_ids]  # B x [G, C_b]
    live = [b for b, k in enumerate(keeps) if int(k.sum()) > 0]  # groups with tokens to score
    if live:
        args = ([prompts[b] for b in live], [completion_ids[b] for b in live], [keeps[b] for b in live], temperature)
        if mode == "shared" and supports_4d_mask(model):
            scored = _batch_shared_forward(model, *args)
        else:
            scored = _batch_repeat_forward(model, *args, share_vision=(mode == "shared"))
        for b, lp in zip(live, scored):
            out[b] = lp
    return [lp * m.to(lp.dtype) for lp, m in zip(out, completion_masks)]


def indexed_token_logprobs(logits: Tensor, index: Tensor, targets: Tensor, temperature: float, chunk: int = 512) -> Tensor:
    """log softmax(logits[index[i]] / T)[targets[i]] in fp32 for logits [K, V] and index, targets [N]:
    each kept position's normaliser is computed once (a prompt's last position predicts the first
    token of all G completions), in chunks of `chunk` positions as in `token_logprobs`."""
    lse = torch.cat(
        [torch.logsumexp(logits[s : s + chunk].float() / temperature, dim=-1) for s in range(0, logits.shape[0], chunk)]
    )  # [K] fp32
    picked = logits[index, targets].float() / temperature  # [N]
    return picked - lse[index]  # [N]


def _batch_shared_forward(
    model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor], keeps: list[Tensor],
    temperature: float,
) -> list[Tensor]:
    dtype = base_model(model).get_input_embeddings().weight.dtype  # the language model's compute dtype
    rows = shared_rows(model, prompts, completion_ids, keeps, dtype, filler_token(model))  # B rows of L
    vision = collate_prompts(prompts, 0).vision  # every prompt's media in row order
    logits = model(
        input_ids=rows.input_ids,
        attention_mask=rows.attention_mask,
        position_ids=rows.position_ids,
        mm_token_type_ids=rows.mm_token_type_ids,
        logits_to_keep=rows.logit_keep,  # boolean [B, L]: logits come back flattened, [K, V]
        use_cache=False,
        mm_encoder_outputs=encode_vision(model, vision),
    ).logits  # [K, V]
    picked = indexed_token_logprobs(logits, rows.logit_rank, rows.targets, temperature)  # [N]
    out = []
    for ids, lp, r, c in zip(completion_ids, picked.split(rows.sizes), rows.out_row.split(rows.sizes),
                             rows.out_col.split(rows.sizes)):
        zeros = torch.zeros(ids.shape, dtype=torch.float32, device=lp.device)  # [G, C_b]
        out.append(zeros.index_put((r, c), lp))
    return out


def _batch_repeat_forward(
    model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor], keeps: list[Tensor],
    temperature: float, share_vision: bool,
) -> list[Tensor]:
    """B*G rows `[prompt_b left-padded to P | c_bg right-padded to C]`; C is the longest kept
    completion, so every row's completion starts in column P and one logits slice serves all rows.
    `share_vision`: the tower runs once and each row reuses its prompt's features."""
    G = group_size(completion_ids)
    filler = filler_token(model)
    batch = left_pad(model, prompts, filler)  # [B, P] rows, positions, media
    C = max(int(k.max()) for k in keeps)
    comp = torch.cat([_fit_width(ids, C, filler) for ids in completion_ids])  # [B*G, C]
    cols = torch.arange(C, device=comp.device)  # [C]
    comp_attn = (cols.view(1, -1) < torch.cat(keeps).view(-1, 1)).long()  # [B*G, C]
    comp_pos = (batch.next_pos.repeat_interleave(G).view(1, -1, 1) + cols.view(1, 1, -1)).expand(3, -1, -1)  # [3, BG, C]
    if share_vision:
        vision_kw = {"mm_encoder_outputs": repeat_features(encode_vision(model, batch.vision),
                                                           [media_counts(p) for p in prompts], G)}
    else:
        vision_kw = collate_prompts(prompts, filler, repeat=G).vision.to(comp.device).as_kwargs()
    logits = model(
        input_ids=torch.cat([batch.input_ids.repeat_interleave(G, dim=0), comp], dim=1),  # [B*G, P+C]
        attention_mask=torch.cat([batch.attention_mask.repeat_interleave(G, dim=0), comp_attn], dim=1),  # [B*G, P+C]
        position_ids=torch.cat([batch.position_ids.repeat_interleave(G, dim=1), comp_pos], dim=2),  # [3, B*G, P+C]
        mm_token_type_ids=torch.cat([batch.mm_token_type_ids.repeat_interleave(G, dim=0),
                                     torch.zeros_like(comp)], dim=1),  # [B*G, P+C]
        logits_to_keep=C + 1,  # prompt's last position .. second-to-last completion position (+1 dropped)
        use_cache=False,
        **vision_kw,
    ).logits[:, :-1]  # [B*G, C, V]
    lp = token_logprobs(logits, comp, temperature)  # [B*G, C]
    return [_fit_width(block, ids.shape[1], 0.0) for block, ids in zip(lp.split(G), completion_ids)]


def _fit_width(t: Tensor, width: int, value: float) -> Tensor:
    """[G, C] -> [G, width]: cut, or right-pad with `value`."""
    if t.shape[1] >= width:
        return t[:, :width]
    pad = t.new_full((t.shape[0], width - t.shape[1]), value)  # [G, width - C]
    return torch.cat([t, pad], dim=1)
