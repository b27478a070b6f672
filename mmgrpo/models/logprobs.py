"""Per-token log-probs of B groups' completions under a model (policy, reference or old policy), in
one forward: the only log-prob forward of the package (RL, SFT, benchmarks).

Every path passes the prompts' vision inputs, so the vision tower runs in every call: a log-prob
forward without them scores a different input than the one generation saw.

Modes:
- `shared`: each prompt (vision tower included) is encoded once and its activations receive the
  gradient of all G completions, summed; how depends on the family (`Family.shared_prefix`):
  `mask`: B rows `[prompt_b | c_b1 | ... | c_bG]` (models.layout.shared_rows) with a 4-D mask in
  which each completion sees the prompt and itself only;
  `cache` (linear-attention layers, Qwen3.5): the B prompts run once into a cache (models.cache),
  which is repeated to B*G rows, and the G completions continue from it in the same graph; a
  recurrent layer has no mask that could keep one completion out of the next one's state.
  Where neither can run, B*G rows reuse one vision-tower output (`repeat` layout, `share_vision`):
  attention implementations without 4-D masks (flash_attention_2, ...) in `mask` families, and
  gradient checkpointing in `cache` families (transformers drops the cache of checkpointed layers);
  `shared_layout` says which, and the first fallback is logged.
- `repeat`: B*G rows `[prompt_b | c_bg]`, vision inputs repeated per row: the baseline other
  trainers use, and the reference the shared path is tested against.

Multi-turn completions (models.multiturn) carry tool turns, images included (`media`): their tool
tokens are context (attention 1) and their log-probs are masked by the caller's mask. The `mask`
layout keeps the prompt once per group and places each completion's tool images after the
prompt's in its row; every other layout runs the B*G whole sequences `[prompt_b | c_bg]` as plain
rows (`_context_forward`), the vision tower on each row's own media.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from mmgrpo.models.cache import new_cache
from mmgrpo.models.families import family_of
from mmgrpo.models.layout import (CompletionMedia, collate_prompts, completion_contexts, keep_lengths, left_pad,
                                  pad_last, rows_vision, shared_rows)
from mmgrpo.models.unwrap import base_model, cache_keyword, compute_dtype, returned_cache, supports_4d_mask, wide
from mmgrpo.models.vision import encode_vision, repeat_features
from mmgrpo.processors.sample import PromptInputs

MODES = ("shared", "repeat")
log = logging.getLogger(__name__)
_warned: set[str] = set()


def shared_layout(model: torch.nn.Module, training: bool | None = None) -> str:
    """How `shared` mode runs on this model: "mask", "cache", or "repeat rows (why)"; for a forward
    with gradients in train mode (`training`), or as the model is now (None)."""
    family = family_of(model)
    if family.shared_prefix == "mask":
        return "mask" if supports_4d_mask(model) else "repeat rows (this attention implementation takes no 4-D mask)"
    if training is None:
        training = model.training and torch.is_grad_enabled()
    checkpointing = base_model(model).is_activation_checkpointing and training
    return "repeat rows (gradient checkpointing drops the prompt's cache)" if checkpointing else "cache"


def batch_logprobs(
    model: torch.nn.Module,
    prompts: list[PromptInputs],
    completion_ids: list[Tensor],
    completion_masks: list[Tensor],
    mode: str,
    temperature: float,
    pad_id: int,
    media: list[CompletionMedia | None] | None = None,
) -> list[Tensor]:
    """`media`: per group, the tool images inside its completions (None: text-only completions,
    the single-turn case). B x [G, C_b] log-probs (fp32, or fp64 for a float64 model) of `completion_ids[b]` [G, C_b] given prompt b; 0 where the mask is
    0. Logits are divided by `temperature` before the softmax (TRL convention), so with the sampling
    temperature these are the log-probs of the distribution that was sampled (before top-k / top-p).
    Every group needs the same G. Differentiable: call under `torch.no_grad()` for fixed log-probs."""
    if mode not in MODES:
        raise ValueError(f"unknown log-prob mode {mode!r}; expected one of {MODES}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    if not (len(prompts) == len(completion_ids) == len(completion_masks)):
        raise ValueError(f"{len(prompts)} prompts, {len(completion_ids)} completion_ids, {len(completion_masks)} masks")
    for b, (ids, mask) in enumerate(zip(completion_ids, completion_masks)):
        if ids.shape != mask.shape:
            raise ValueError(f"group {b}: completion_ids {tuple(ids.shape)} != completion_mask {tuple(mask.shape)}")
    if len({int(ids.shape[0]) for ids in completion_ids}) > 1:
        raise ValueError(f"every group needs the same number of completions, got {[c.shape[0] for c in completion_ids]}")
    keeps = [keep_lengths(m) for m in completion_masks]  # B x [G] long
    out = [torch.zeros(ids.shape, dtype=torch.float32, device=ids.device) for ids in completion_ids]  # B x [G, C_b]
    media = media if media is not None else [None] * len(prompts)
    live = [b for b, k in enumerate(keeps) if int(k.sum()) > 0]  # groups with tokens to score
    if live:  # (a group with nothing to score gets zeros and no forward: it carries no gradient)
        args = ([prompts[b] for b in live], [completion_ids[b] for b in live], [keeps[b] for b in live],
                temperature, pad_id)
        layout = shared_layout(model) if mode == "shared" else "repeat"
        with_media = any(media[b] is not None for b in live)
        if layout == "mask":
            scored = _shared_forward(model, *args, [media[b] for b in live])
        elif with_media:
            scored = _context_forward(model, *args, [media[b] for b in live])
        elif layout == "cache":
            scored = _cache_forward(model, *args)
        else:
            if mode == "shared" and layout not in _warned:
                _warned.add(layout)
                log.warning("shared log-prob forward of %s runs as %s", family_of(model).title, layout)
            scored = _repeat_forward(model, *args, share_vision=(mode == "shared"))
        for b, lp in zip(live, scored):
            out[b] = lp
    return [lp * m.to(lp.dtype) for lp, m in zip(out, completion_masks)]


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float, chunk: int = 512) -> Tensor:
    """log softmax(logits / T)[target] in fp32 (fp64 for fp64 logits) for logits [..., V] and targets [...]. In chunks of
    `chunk` tokens so that only a [chunk, V] fp32 copy of the logits exists at a time outside of
    autograd (V is ~152k for real models)."""
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [n, V]
    flat_targets = targets.reshape(-1)  # [n]
    out = []
    for start in range(0, flat_targets.numel(), chunk):
        scaled = wide(flat_logits[start : start + chunk]) / temperature  # [c, V] fp32 (or fp64)
        picked = scaled.gather(-1, flat_targets[start : start + chunk, None]).squeeze(-1)  # [c]
        out.append(picked - torch.logsumexp(scaled, dim=-1))  # [c]
    return torch.cat(out).view(targets.shape)  # [...]


def indexed_token_logprobs(logits: Tensor, index: Tensor, targets: Tensor, temperature: float,
                           chunk: int = 512) -> Tensor:
    """log softmax(logits[index[i]] / T)[targets[i]] in fp32 for logits [K, V] and index, targets [N]:
    each kept position's normaliser is computed once (a prompt's last position predicts the first
    token of all G completions), in chunks as in `token_logprobs`."""
    lse = torch.cat(
        [torch.logsumexp(wide(logits[s : s + chunk]) / temperature, dim=-1) for s in range(0, logits.shape[0], chunk)]
    )  # [K] fp32 (or fp64)
    picked = wide(logits[index, targets]) / temperature  # [N]
    return picked - lse[index]  # [N]


def _shared_forward(model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor],
                    keeps: list[Tensor], temperature: float, pad_id: int,
                    media: list[CompletionMedia | None]) -> list[Tensor]:
    rows = shared_rows(model, prompts, completion_ids, keeps, media, compute_dtype(model), pad_id)  # B rows of L
    vision = rows_vision(prompts, keeps, media)  # per row: the prompt's media, then its completions' tool images
    # 3-row position_ids: no leading text-position row, which transformers only reads to detect
    # packed sequences when there is no mask; our 4-D mask is used as-is.
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
        zeros = torch.zeros(ids.shape, dtype=lp.dtype, device=lp.device)  # [G, C_b]
        out.append(zeros.index_put((r, c), lp))
    return out


def _cache_forward(model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor],
                   keeps: list[Tensor], temperature: float, pad_id: int) -> list[Tensor]:
    """The B prompts once (vision tower once, with gradients) into a cache, repeated to G rows per
    prompt, then the B*G completions continued from it in the same graph. Token 0 of a completion is
    predicted by its prompt's last position, token j > 0 by its own token j - 1; completions are
    right-padded to the longest kept one (padding only follows real tokens, so no real token sees it)."""
    G = int(completion_ids[0].shape[0])
    padded = left_pad(model, prompts, pad_id)  # [B, P] rows, positions, media
    batch, cache_kw = padded.batch, cache_keyword(model)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=padded.position_ids,
                mm_token_type_ids=batch.mm_token_type_ids, logits_to_keep=1, use_cache=True,
                mm_encoder_outputs=encode_vision(model, batch.vision), **{cache_kw: new_cache(model)})
    C = max(int(k.max()) for k in keeps)
    comp = torch.cat([pad_last(ids, C, pad_id) for ids in completion_ids])  # [B*G, C]
    first = token_logprobs(out.logits[:, -1].repeat_interleave(G, dim=0), comp[:, 0], temperature)  # [B*G]
    lp = first.view(-1, 1)  # [B*G, 1]
    if C > 1:
        cache = returned_cache(out)
        cache.batch_repeat_interleave(G)  # differentiable: the G rows' gradients sum into the prompt
        cols = torch.arange(C - 1, device=comp.device)  # [C-1]
        comp_attn = (cols.view(1, -1) < torch.cat(keeps).view(-1, 1)).long()  # [B*G, C-1], 1 on real tokens
        pos = (padded.next_pos.repeat_interleave(G).view(1, -1, 1) + cols.view(1, 1, -1)).expand(3, -1, -1)  # [3,BG,C-1]
        logits = model(input_ids=comp[:, :-1], position_ids=pos, use_cache=True, **{cache_kw: cache},
                       attention_mask=torch.cat([batch.attention_mask.repeat_interleave(G, dim=0), comp_attn], dim=1),
                       mm_token_type_ids=torch.zeros_like(comp[:, :-1])).logits  # [B*G, C-1, V]
        lp = torch.cat([lp, token_logprobs(logits, comp[:, 1:], temperature)], dim=1)  # [B*G, C]
    return [pad_last(block, ids.shape[1], 0.0) for block, ids in zip(lp.split(G), completion_ids)]


def _repeat_forward(model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor],
                    keeps: list[Tensor], temperature: float, pad_id: int, share_vision: bool) -> list[Tensor]:
    """B*G rows `[prompt_b left-padded to P | c_bg right-padded to C]`; C is the longest kept
    completion, so every row's completion starts in column P and one logits slice serves all rows.
    `share_vision`: the tower runs once and each row reuses its prompt's features."""
    G = int(completion_ids[0].shape[0])
    padded = left_pad(model, prompts, pad_id)  # [B, P] rows, positions, media
    batch = padded.batch
    C = max(int(k.max()) for k in keeps)
    comp = torch.cat([pad_last(ids, C, pad_id) for ids in completion_ids])  # [B*G, C]
    cols = torch.arange(C, device=comp.device)  # [C]
    comp_attn = (cols.view(1, -1) < torch.cat(keeps).view(-1, 1)).long()  # [B*G, C]
    comp_pos = (padded.next_pos.repeat_interleave(G).view(1, -1, 1) + cols.view(1, 1, -1)).expand(3, -1, -1)  # [3,BG,C]
    if share_vision:
        vision_kw = {"mm_encoder_outputs": repeat_features(encode_vision(model, batch.vision), prompts, G)}
    else:
        vision_kw = collate_prompts(prompts, pad_id, repeat=G).vision.to(comp.device).as_kwargs()
    logits = model(
        input_ids=torch.cat([batch.input_ids.repeat_interleave(G, dim=0), comp], dim=1),  # [B*G, P+C]
        attention_mask=torch.cat([batch.attention_mask.repeat_interleave(G, dim=0), comp_attn], dim=1),  # [B*G, P+C]
        position_ids=torch.cat([padded.position_ids.repeat_interleave(G, dim=1), comp_pos], dim=2),  # [3, B*G, P+C]
        mm_token_type_ids=torch.cat([batch.mm_token_type_ids.repeat_interleave(G, dim=0),
                                     torch.zeros_like(comp)], dim=1),  # [B*G, P+C]
        logits_to_keep=C + 1,  # prompt's last position .. second-to-last completion position (+1 dropped)
        use_cache=False,
        **vision_kw,
    ).logits[:, :-1]  # [B*G, C, V]
    lp = token_logprobs(logits, comp, temperature)  # [B*G, C]
    return [pad_last(block, ids.shape[1], 0.0) for block, ids in zip(lp.split(G), completion_ids)]


def _context_forward(model: torch.nn.Module, prompts: list[PromptInputs], completion_ids: list[Tensor],
                     keeps: list[Tensor], temperature: float, pad_id: int,
                     media: list[CompletionMedia | None]) -> list[Tensor]:
    """B*G plain rows `[prompt_b | c_bg[:keep]]` (each with its own media: the prompt's, then the
    completion's kept tool images), left-padded, one forward. Left padding right-aligns every
    completion, so the logits of the last C + 1 columns predict the right-aligned completions."""
    G = int(completion_ids[0].shape[0])
    rows = [ctx for p, ids, k, m in zip(prompts, completion_ids, keeps, media)
            for ctx in (completion_contexts(p, ids, k, m) if m is not None else
                        [extended_text(p, ids[g, : int(n)]) for g, n in enumerate(k.tolist())])]
    padded = left_pad(model, rows, pad_id)  # [B*G, L] rows, positions, media
    batch = padded.batch
    C = max(int(k.max()) for k in keeps)
    keep = torch.cat(keeps)  # [B*G]
    targets = batch.input_ids[:, -C:]  # [B*G, C], row i's completion in its last keep[i] columns
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=padded.position_ids,
                   mm_token_type_ids=batch.mm_token_type_ids, logits_to_keep=C + 1, use_cache=False,
                   mm_encoder_outputs=encode_vision(model, batch.vision)).logits[:, :-1]  # [B*G, C, V]
    right = token_logprobs(logits, targets, temperature)  # [B*G, C], right-aligned
    shift = (C - keep).view(-1, 1)  # [B*G, 1]: columns of padding before each completion
    cols = (torch.arange(C, device=right.device).view(1, -1) + shift).clamp(max=C - 1)  # [B*G, C]
    left = right.gather(1, cols) * (torch.arange(C, device=right.device).view(1, -1) < keep.view(-1, 1))  # [B*G, C]
    return [pad_last(block, ids.shape[1], 0.0) for block, ids in zip(left.split(G), completion_ids)]


def extended_text(prompt: PromptInputs, ids: Tensor) -> PromptInputs:
    """The prompt followed by text-only completion tokens `ids` [n]."""
    return completion_contexts(prompt, ids.view(1, -1), ids.new_full((1,), ids.numel()),
                               CompletionMedia(torch.zeros(1, ids.numel(), dtype=torch.int, device=ids.device),
                                               (None,), (None,), ((),)))[0]
