"""Generation: the batched group sampler of the rollout, and one thin wrapper around Hugging Face
`generate` (used by the `repeat` rollout mode, evaluation and `mmgrpo infer`).

`generate_groups` samples G completions for each of B prompts:
- `shared` (default): the vision tower once for all media and one prefill of the B left-padded
  prompts; the KV cache is repeated to B*G rows and one decode loop samples them, each group with
  its own generator, so a group's completions depend neither on the other groups of the batch nor
  on which process generates it. Rows that finish leave the cache.
- `repeat`: HF `generate` over B*G rows (each prompt and its media repeated G times), sampling from
  the global RNG seeded from the first group's generator: the baseline other trainers use.
Both sample from softmax((logits with vision placeholders at -inf) / T) restricted by top-k then
top-p, exactly as transformers' warpers do (tested).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig as HFGenerationConfig

from mmgrpo.models.cache import new_cache
from mmgrpo.models.layout import PromptBatch, collate_prompts, left_pad, rope_positions
from mmgrpo.models.special import SpecialIds
from mmgrpo.models.unwrap import cache_keyword, returned_cache, wide
from mmgrpo.models.vision import encode_vision
from mmgrpo.processors.sample import PromptInputs

MODES = ("shared", "repeat")


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int

    @classmethod
    def of(cls, gen) -> "Sampling":
        """From a `config.GenerationConfig`."""
        return cls(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k)


@dataclass(frozen=True)
class Rollout:
    """G completions of one prompt."""

    completion_ids: Tensor  # [G, C] long, right-padded with the pad id
    completion_mask: Tensor  # [G, C] long, 1 up to and including the EOS token, 0 after
    truncated: Tensor  # [G] bool, no EOS within max_new_tokens
    texts: tuple[str, ...]  # G decoded completions (special tokens skipped)
    # [G, C] fp32: the sampling distribution's log-prob of each sampled token, 0 after the mask, from
    # an engine other than the trainer's model (vLLM); None when the trainer's own model sampled
    logprobs: Tensor | None = None


def finalize(tokens: Tensor, special: SpecialIds, tokenizer) -> Rollout:
    """Mask up to and including the first EOS; pad after it; decode; cut to the group's own width
    (its longest completion, EOS included), whatever longer groups of the batch decoded."""
    G, C = tokens.shape
    is_eos = torch.isin(tokens, special.eos_tensor(tokens.device))  # [G, C] bool
    has_eos = is_eos.any(dim=1)  # [G] bool
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), C)  # [G] long, C = none
    cols = torch.arange(C, device=tokens.device).view(1, -1)  # [1, C]
    mask = (cols <= first_eos.view(-1, 1)).long()  # [G, C]
    width = int(mask.sum(dim=1).max()) if mask.numel() else 0
    tokens, mask = tokens.masked_fill(mask == 0, special.pad)[:, :width], mask[:, :width]  # [G, width]
    texts = tokenizer.batch_decode([row[: int(m.sum())] for row, m in zip(tokens, mask)], skip_special_tokens=True)
    return Rollout(completion_ids=tokens, completion_mask=mask, truncated=~has_eos, texts=tuple(texts))


def generate_groups(
    model: torch.nn.Module,
    tokenizer,
    special: SpecialIds,
    prompts: list[PromptInputs],
    num_generations: int,
    sampling: Sampling,
    generators: list[torch.Generator],
    mode: str,
) -> list[Rollout]:
    """G = `num_generations` completions for each prompt (on the model's device); group b samples
    with `generators[b]` (on the model's device) in `shared` mode. The model's train/eval mode is
    left as the caller set it (dropout in train mode would sample from a perturbed policy)."""
    if mode not in MODES:
        raise ValueError(f"unknown rollout mode {mode!r}; expected one of {MODES}")
    if len(generators) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(generators)} generators; give one per group")
    if not prompts:
        return []
    G = num_generations
    with torch.no_grad():
        if mode == "repeat":
            rows = 1 if sampling.temperature == 0 else G  # greedy rows would all be equal
            batch = collate_prompts(prompts, special.pad, repeat=rows)
            seed = int(torch.randint(0, 2**62, (1,), generator=generators[0], device=generators[0].device))
            tokens = hf_generate(model, batch, sampling, special, seed).repeat_interleave(G // rows, dim=0)  # [BG, C]
        else:
            tokens = _decode_shared(model, special, prompts, G, sampling, generators)  # [B*G, C]
    return [finalize(block, special, tokenizer) for block in tokens.split(G)]


def prefill_groups(model: torch.nn.Module, prompts: list[PromptInputs], G: int, pad_id: int):
    """Vision tower once (all media) and one prefill of the B left-padded prompts, then the KV cache
    repeated to B*G rows grouped by prompt (rows b*G .. b*G+G-1 continue prompt b).
    Returns (cache, first-step logits [B*G, V] fp32 or wider, the padded prompts)."""
    padded = left_pad(model, prompts, pad_id)  # [B, P] rows
    out = model(
        input_ids=padded.batch.input_ids,
        attention_mask=padded.batch.attention_mask,
        position_ids=padded.position_ids,
        mm_token_type_ids=padded.batch.mm_token_type_ids,
        use_cache=True,
        logits_to_keep=1,  # every row's last column is its prompt's last token
        mm_encoder_outputs=encode_vision(model, padded.batch.vision),
        **{cache_keyword(model): new_cache(model)},  # rows repeat and drop out in every family (models.cache)
    )
    cache = returned_cache(out)
    if cache is None:
        raise RuntimeError("the model returned no KV cache (gradient checkpointing in train mode disables it); "
                           "call model.eval() before generating")
    cache.batch_repeat_interleave(G)
    return cache, wide(out.logits[:, -1]).repeat_interleave(G, dim=0), padded


def _decode_shared(model: torch.nn.Module, special: SpecialIds, prompts: list[PromptInputs], G: int,
                   sampling: Sampling, generators: list[torch.Generator]) -> Tensor:
    """The decoder over B*G rows: rows that finish leave the cache; live rows stay sorted by group,
    so each group's rows are one block for its generator."""
    cache, logits, padded = prefill_groups(model, prompts, G, special.pad)  # B*G cache rows, [B*G, V]
    device = logits.device
    tokens = torch.full((len(prompts) * G, sampling.max_new_tokens), special.pad, dtype=torch.long, device=device)
    alive = torch.arange(len(prompts) * G, device=device)  # [n] long, rows still decoding
    attn = padded.batch.attention_mask.repeat_interleave(G, dim=0)  # [n, P] long, 0 on left padding
    next_pos = padded.next_pos.repeat_interleave(G)  # [n] long, first completion position per row
    sampler = Sampler(sampling, special.banned_tensor(device))
    eos = special.eos_tensor(device)  # [n_eos]
    cache_kw = cache_keyword(model)
    steps = 0
    for t in range(sampling.max_new_tokens):
        counts = torch.bincount(alive // G, minlength=len(prompts)).tolist()  # live rows per group
        nxt = sampler.per_group(logits, counts, generators)  # [n] long
        tokens[alive, t] = nxt
        steps = t + 1
        still = ~torch.isin(nxt, eos)  # [n] bool
        if steps == sampling.max_new_tokens or not bool(still.any()):
            break
        if not bool(still.all()):
            keep = still.nonzero().squeeze(1)  # [n'] long, order kept: still sorted by group
            cache.batch_select_indices(keep)
            alive, nxt, attn, next_pos = alive[keep], nxt[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)  # [n, P + t + 1]
        step_pos = (next_pos + t).view(1, -1, 1).expand(3, -1, 1)  # [3, n, 1], same on all mRoPE axes
        out = model(input_ids=nxt.view(-1, 1), attention_mask=attn, position_ids=step_pos, use_cache=True,
                    **{cache_kw: cache})
        logits = wide(out.logits[:, -1])  # [n, V]
    return tokens[:, :steps]


class Sampler:
    """Next-token sampling with transformers' semantics: banned ids to -inf, logits / T, top-k
    (keep scores >= k-th best), top-p (drop the low tail whose mass is <= 1 - p, keep at least
    one), softmax, multinomial. T == 0: argmax."""

    def __init__(self, sampling: Sampling, banned: Tensor):
        self.sampling = sampling
        self.banned = banned  # [n_banned] long

    def distribution(self, logits: Tensor) -> Tensor:
        """Sampling probabilities [n, V] (fp32 or wider) from logits [n, V]; for T == 0, logits after banning."""
        s = self.sampling
        scores = wide(logits).index_fill(-1, self.banned, float("-inf"))  # [n, V]
        if s.temperature == 0:
            return scores
        scores = scores / s.temperature
        if s.top_k:
            kth = torch.topk(scores, min(s.top_k, scores.shape[-1]), dim=-1).values[..., -1:]  # [n, 1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if s.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)  # [n, V]
            cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # [n, V]
            drop_sorted = cum <= (1 - s.top_p)
            drop_sorted[..., -1:] = False
            scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return scores.softmax(dim=-1)

    def per_group(self, logits: Tensor, counts: list[int], generators: list[torch.Generator]) -> Tensor:
        """Next tokens [n] for rows that are consecutive blocks of `counts[b]` rows per group: one
        distribution over all rows, then each block drawn with its group's generator (a group with no
        live rows draws nothing)."""
        dist = self.distribution(logits)  # [n, V]
        if self.sampling.temperature == 0:
            return dist.argmax(dim=-1)
        blocks = dist.split(counts)  # B x [counts[b], V]
        draws = [torch.multinomial(d, 1, generator=g) for d, g, c in zip(blocks, generators, counts) if c]
        return torch.cat(draws).squeeze(1)  # [n] long


# ----------------------------------------------------------------------------------------------
# Hugging Face generate, with every option explicit


def hf_generation_config(sampling: Sampling, special: SpecialIds) -> HFGenerationConfig:
    """Every sampling option set explicitly: unset ones would be filled from the checkpoint's
    generation_config.json (Qwen2.5-VL ships repetition_penalty=1.05, top_k=1, top_p=0.001), and
    the samples would no longer come from the policy the loss assumes."""
    greedy = sampling.temperature == 0
    # greedy: the sampling flags at transformers' own defaults, which read as unset; None would take the
    # checkpoint's values, and then generate warns on every call that they are ignored
    return HFGenerationConfig(
        do_sample=not greedy,
        temperature=1.0 if greedy else sampling.temperature,
        top_k=50 if greedy else sampling.top_k,
        top_p=1.0 if greedy else sampling.top_p,
        min_p=None if greedy else 0.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        max_new_tokens=sampling.max_new_tokens,
        num_return_sequences=1,
        eos_token_id=list(special.eos),
        pad_token_id=special.pad,
        bad_words_ids=[[t] for t in special.banned] or None,
        use_cache=True,  # a training model has it off for gradient checkpointing
    )


def hf_generate(model: torch.nn.Module, batch: PromptBatch, sampling: Sampling, special: SpecialIds,
                seed: int | None) -> Tensor:
    """New tokens [rows, C] of HF `generate` on a left-padded batch. The prompt's mRoPE positions are
    passed explicitly (the family's pretraining rule, models.positions); `generate` continues them
    one per new token on every axis, as the trainer's forwards do. `seed`: sampling draws from the
    global RNG seeded with it inside a forked RNG state, so the caller's RNG is left untouched and the
    draws are repeatable; None = the global RNG as it is."""
    positions, _ = rope_positions(model, batch)  # [3, rows, P]
    device = batch.input_ids.device
    forked = seed is not None and sampling.temperature > 0
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if forked else contextlib.nullcontext()
    with rng, torch.no_grad():
        if forked:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=positions,
            mm_token_type_ids=batch.mm_token_type_ids,
            generation_config=hf_generation_config(sampling, special),
            # never wait for other processes: under FSDP / ZeRO-3 transformers would otherwise sync
            # every decoding step, though the trainer gathers the parameters first and sharded
            # evaluation gives processes different numbers of batches to generate
            synced_gpus=False,
            **batch.vision.as_kwargs(),
        )  # [rows, P + C]
    return out[:, batch.input_ids.shape[1] :]


@dataclass(frozen=True)
class Completions:
    texts: tuple[str, ...]  # [B*K] decoded, special tokens skipped; rows i*K .. i*K+K-1 belong to prompt i
    num_tokens: tuple[int, ...]  # [B*K] generated tokens before the first EOS
    seconds: float  # wall time of the generate call


def generate_texts(model: torch.nn.Module, tokenizer, special: SpecialIds, prompts: list[PromptInputs],
                   sampling: Sampling, num_samples: int, seed: int | None) -> Completions:
    """K = `num_samples` completions of each prompt as text (evaluation, inference), one `generate`
    call over the left-padded batch (a padded row decodes as it would alone: tested)."""
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    batch = collate_prompts(prompts, special.pad, repeat=num_samples).to(device, dtype)
    t0 = time.perf_counter()
    new = hf_generate(model, batch, sampling, special, seed).cpu()  # [B*K, C]
    seconds = time.perf_counter() - t0
    is_eos = torch.isin(new, special.eos_tensor("cpu"))  # [B*K, C]
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((new.shape[0],), new.shape[1]))  # [B*K]
    texts = tuple(tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, lengths.tolist()))
    return Completions(texts=texts, num_tokens=tuple(lengths.tolist()), seconds=seconds)
