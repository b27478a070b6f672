"""Rollout: sample G completions of one prompt. Kept behind `generate_group` so a faster backend
(vLLM, SGLang) can replace it without touching the trainer.

Modes:
- `shared` (default): the vision tower and the prompt prefill run once (batch 1); the KV cache is
  repeated to G rows and the G completions are decoded together by our own sampling loop. Rows
  that finish are dropped from the cache, so late steps only pay for live completions.
- `repeat`: Hugging Face `generate` with `num_return_sequences=G` (prompt prefilled G times).

`generate_groups` does the same for all B groups of a step at once (one prefill of the left-padded
prompts, one decode loop over B*G rows); each group samples with its own generator, so a group's
completions do not depend on what else is in the batch.

Both sample from the same distribution: softmax((logits with vision placeholders at -inf) / T),
restricted by top-k then top-p exactly as transformers' warpers do.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Cache
from transformers import GenerationConfig as HFGenerationConfig

from mmgrpo.config import GenerationConfig
from mmgrpo.models.loading import bad_words_ids
from mmgrpo.eval.generate import collate_prompts
from mmgrpo.processors.sample import PromptInputs
from mmgrpo.trainer.batched import encode_vision, left_pad
from mmgrpo.trainer.prefix import base_model, prompt_positions

MODES = ("shared", "repeat")


@dataclass
class Rollout:
    completion_ids: Tensor  # [G, C] long, right-padded with the pad id
    completion_mask: Tensor  # [G, C] long, 1 up to and including the EOS token, 0 after
    truncated: Tensor  # [G] bool, no EOS within max_new_tokens
    texts: list[str]  # G decoded completions (special tokens skipped)


@dataclass
class SpecialIds:
    eos: Tensor  # [n_eos] long, any of them ends a completion
    pad: int  # fills a completion after its EOS
    banned: Tensor  # [n_banned] long, vision placeholders, never sampled


def special_ids(model: torch.nn.Module, processor) -> SpecialIds:
    """EOS ids from the model's generation config (`<|im_end|>`, `<|endoftext|>` for Qwen)."""
    tok = processor.tokenizer
    eos = base_model(model).generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos:
        eos = [tok.eos_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    banned = [ids[0] for ids in bad_words_ids(processor)]
    return SpecialIds(eos=torch.tensor(eos), pad=int(pad), banned=torch.tensor(banned, dtype=torch.long))


def generate_group(
    model: torch.nn.Module,
    processor,
    prompt: PromptInputs,
    num_generations: int,
    gen: GenerationConfig,
    generator: torch.Generator | None = None,
    mode: str = "shared",
) -> Rollout:
    """Sample `num_generations` completions of `prompt` (batch 1, on the model's device).

    `generator` (on the model's device) makes sampling deterministic; in `repeat` mode it seeds the
    global RNG inside a forked RNG state, since `generate` takes no generator. `gen.temperature == 0`
    means greedy decoding. The model's train/eval mode is left as the caller set it (dropout in
    train mode would sample from a perturbed policy, so callers generate in eval mode)."""
    if mode not in MODES:
        raise ValueError(f"unknown rollout mode {mode!r}; expected one of {MODES}")
    ids = special_ids(model, processor)
    with torch.no_grad():
        if mode == "repeat":
            completion_ids = _generate_repeat(model, prompt, num_generations, gen, ids, generator)  # [G, C]
        else:
            completion_ids = _generate_shared(model, prompt, num_generations, gen, ids, generator)  # [G, C]
    return finalize(completion_ids, ids, processor)


def finalize(completion_ids: Tensor, ids: SpecialIds, processor) -> Rollout:
    """Mask up to and including the first EOS; pad after it; decode."""
    G, C = completion_ids.shape
    is_eos = torch.isin(completion_ids, ids.eos.to(completion_ids.device))  # [G, C] bool
    has_eos = is_eos.any(dim=1)  # [G] bool
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), C)  # [G] long, C = none
    cols = torch.arange(C, device=completion_ids.device).view(1, -1)  # [1, C]
    mask = (cols <= first_eos.view(-1, 1)).long()  # [G, C]
    completion_ids = completion_ids.masked_fill(mask == 0, ids.pad)  # [G, C]
    texts = processor.tokenizer.batch_decode(
        [row[: int(m.sum())] for row, m in zip(completion_ids, mask)], skip_special_tokens=True
    )
    return Rollout(completion_ids=completion_ids, completion_mask=mask, truncated=~has_eos, texts=texts)


def _generate_repeat(
    model: torch.nn.Module,
    prompt: PromptInputs,
    G: int,
    gen: GenerationConfig,
    ids: SpecialIds,
    generator: torch.Generator | None,
) -> Tensor:
    greedy = gen.temperature == 0
    # greedy rows are identical, and transformers refuses num_return_sequences > 1 without sampling
    hf_cfg = hf_generation_config(gen, ids, num_return_sequences=1 if greedy else G)
    rng = contextlib.nullcontext() if generator is None else _seeded_global_rng(generator, prompt.input_ids.device)
    with rng:
        sequences = model.generate(
            input_ids=prompt.input_ids,
            attention_mask=torch.ones_like(prompt.input_ids),
            mm_token_type_ids=prompt.mm_token_type_ids,
            generation_config=hf_cfg,
            **prompt.vision.as_kwargs(),
        )  # [G or 1, P + C]
    return sequences[:, prompt.length :].expand(G, -1).clone()  # [G, C]


def hf_generation_config(gen: GenerationConfig, ids: SpecialIds, num_return_sequences: int) -> HFGenerationConfig:
    """Every sampling option set explicitly: unset ones would be filled from the checkpoint's
    generation_config.json (Qwen2.5-VL ships repetition_penalty=1.05, top_k=1, top_p=0.001), and
    the samples would no longer come from the policy the loss assumes."""
    greedy = gen.temperature == 0
    return HFGenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else gen.temperature,
        top_k=None if greedy else gen.top_k,
        top_p=None if greedy else gen.top_p,
        min_p=None if greedy else 0.0,
        typical_p=None if greedy else 1.0,
        repetition_penalty=1.0,
        max_new_tokens=gen.max_new_tokens,
        num_return_sequences=num_return_sequences,
        eos_token_id=ids.eos.tolist(),
        pad_token_id=ids.pad,
        bad_words_ids=[[int(t)] for t in ids.banned] or None,
    )


@contextlib.contextmanager
def _seeded_global_rng(generator: torch.Generator, device: torch.device):
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def prefill_shared(model: torch.nn.Module, prompt: PromptInputs, G: int) -> tuple[Cache, Tensor, int]:
    """Vision tower + prompt prefill once (batch 1), then the KV cache repeated to G rows.
    Returns (cache, first-step logits [G, V] fp32, position of the first completion token)."""
    positions, next_pos = prompt_positions(model, prompt)  # [3, 1, P], int
    out = model(
        input_ids=prompt.input_ids,
        mm_token_type_ids=prompt.mm_token_type_ids,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **prompt.vision.as_kwargs(),
    )
    cache = out.past_key_values
    if cache is None:
        raise RuntimeError(
            "the model returned no KV cache (gradient checkpointing in train mode disables it); "
            "call model.eval() before generate_group"
        )
    cache.batch_repeat_interleave(G)  # every row continues from the same prompt state
    return cache, out.logits[:, -1].float().expand(G, -1), next_pos


def _generate_shared(
    model: torch.nn.Module,
    prompt: PromptInputs,
    G: int,
    gen: GenerationConfig,
    ids: SpecialIds,
    generator: torch.Generator | None,
) -> Tensor:
    """Prefill once, repeat the cache G times, decode the G rows together, dropping finished rows."""
    cache, logits, next_pos = prefill_shared(model, prompt, G)  # cache of G rows, [G, V], int
    tokens = torch.full((G, gen.max_new_tokens), ids.pad, dtype=torch.long, device=logits.device)  # [G, max_new]
    alive = torch.arange(G, device=logits.device)  # [n] long, rows still decoding
    sampler = Sampler(gen, ids.banned.to(logits.device), generator)
    eos = ids.eos.to(logits.device)  # [n_eos]
    steps = 0
    for t in range(gen.max_new_tokens):
        nxt = sampler(logits)  # [n] long
        tokens[alive, t] = nxt
        steps = t + 1
        still = ~torch.isin(nxt, eos)  # [n] bool
        if steps == gen.max_new_tokens or not bool(still.any()):
            break
        if not bool(still.all()):
            keep = still.nonzero().squeeze(1)  # [n'] long
            cache.batch_select_indices(keep)
            alive, nxt = alive[keep], nxt[keep]
        # every completion token sits at next_pos + t on all three mRoPE axes, whatever the row
        step_pos = torch.full((3, alive.numel(), 1), next_pos + t, dtype=torch.long, device=nxt.device)  # [3, n, 1]
        out = model(input_ids=nxt.view(-1, 1), position_ids=step_pos, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()  # [n, V]
    return tokens[:, :steps]


def generate_groups(
    model: torch.nn.Module,
    processor,
    prompts: list[PromptInputs],
    num_generations: int,
    gen: GenerationConfig,
    generators: list[torch.Generator | None],
    mode: str = "shared",
) -> list[Rollout]:
    """`generate_group` for B prompts at once: one prefill (vision tower once) and one decode loop
    over B*G rows. Group b samples with `generators[b]` (on the model's device), so its completions
    are those `generate_group(..., generator=generators[b])` gives, whatever else is in the batch
    (equal logits up to float rounding from the padding; tested). Each group keeps its own width.

    `repeat` mode is the baseline other trainers use: HF `generate` over B*G rows (each prompt
    repeated G times, vision inputs too), sampling from the global RNG seeded from `generators[0]`;
    its samples therefore depend on the batch, unlike `shared` mode's."""
    if mode not in MODES:
        raise ValueError(f"unknown rollout mode {mode!r}; expected one of {MODES}")
    if len(generators) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(generators)} generators; give one per group")
    if not prompts:
        return []
    ids = special_ids(model, processor)
    with torch.no_grad():
        if mode == "repeat":
            tokens = _generate_groups_repeat(model, prompts, num_generations, gen, ids, generators[0])  # [B*G, C]
        else:
            tokens = _generate_groups_shared(model, prompts, num_generations, gen, ids, generators)  # [B*G, C]
    return [_own_width(finalize(block, ids, processor)) for block in tokens.split(num_generations)]


def _own_width(r: Rollout) -> Rollout:
    """Drop the columns a group gets only from longer groups of the batch: its width is then the
    number of steps it decoded alone (its longest completion, EOS included)."""
    width = int(r.completion_mask.sum(dim=1).max()) if r.completion_mask.numel() else 0
    return Rollout(r.completion_ids[:, :width], r.completion_mask[:, :width], r.truncated, r.texts)


def prefill_groups(model: torch.nn.Module, prompts: list[PromptInputs], G: int, pad_id: int):
    """Vision tower once (all media) and one prefill of the B left-padded prompts, then the KV cache
    repeated to B*G rows grouped by prompt (rows b*G .. b*G+G-1 continue prompt b).
    Returns (cache, first-step logits [B*G, V] fp32, the padded prompts)."""
    batch = left_pad(model, prompts, pad_id)  # [B, P] rows
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        mm_token_type_ids=batch.mm_token_type_ids,
        use_cache=True,
        logits_to_keep=1,  # every row's last column is its prompt's last token
        mm_encoder_outputs=encode_vision(model, batch.vision),
    )
    cache = out.past_key_values
    if cache is None:
        raise RuntimeError("the model returned no KV cache; call model.eval() before generate_groups")
    cache.batch_repeat_interleave(G)
    return cache, out.logits[:, -1].float().repeat_interleave(G, dim=0), batch


def _generate_groups_shared(
    model: torch.nn.Module,
    prompts: list[PromptInputs],
    G: int,
    gen: GenerationConfig,
    ids: SpecialIds,
    generators: list[torch.Generator | None],
) -> Tensor:
    """The per-group decoder over B*G rows: rows that finish leave the cache; live rows stay sorted
    by group, so each group's rows are one block for its generator."""
    cache, logits, batch = prefill_groups(model, prompts, G, ids.pad)  # B*G cache rows, [B*G, V]
    device = logits.device
    tokens = torch.full((len(prompts) * G, gen.max_new_tokens), ids.pad, dtype=torch.long, device=device)  # [BG, T]
    alive = torch.arange(len(prompts) * G, device=device)  # [n] long, rows still decoding
    attn = batch.attention_mask.repeat_interleave(G, dim=0)  # [n, P] long, 0 on left padding
    next_pos = batch.next_pos.repeat_interleave(G)  # [n] long, first completion position per row
    sampler = Sampler(gen, ids.banned.to(device), None)
    eos = ids.eos.to(device)  # [n_eos]
    steps = 0
    for t in range(gen.max_new_tokens):
        counts = torch.bincount(alive // G, minlength=len(prompts)).tolist()  # live rows per group
        nxt = sampler.per_group(logits, counts, generators)  # [n] long
        tokens[alive, t] = nxt
        steps = t + 1
        still = ~torch.isin(nxt, eos)  # [n] bool
        if steps == gen.max_new_tokens or not bool(still.any()):
            break
        if not bool(still.all()):
            keep = still.nonzero().squeeze(1)  # [n'] long, order kept: still sorted by group
            cache.batch_select_indices(keep)
            alive, nxt, attn, next_pos = alive[keep], nxt[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)  # [n, P + t + 1]
        step_pos = (next_pos + t).view(1, -1, 1).expand(3, -1, 1)  # [3, n, 1], same on all mRoPE axes
        out = model(input_ids=nxt.view(-1, 1), attention_mask=attn, position_ids=step_pos, past_key_values=cache,
                    use_cache=True)
        logits = out.logits[:, -1].float()  # [n, V]
    return tokens[:, :steps]


def _generate_groups_repeat(
    model: torch.nn.Module,
    prompts: list[PromptInputs],
    G: int,
    gen: GenerationConfig,
    ids: SpecialIds,
    generator: torch.Generator | None,
) -> Tensor:
    """HF `generate` on B*G left-padded rows (B rows when greedy: they would all be equal)."""
    rows = 1 if gen.temperature == 0 else G
    batch = collate_prompts(prompts, ids.pad, repeat=rows)  # [B*rows, P], media repeated per row
    device = prompts[0].input_ids.device
    rng = contextlib.nullcontext() if generator is None else _seeded_global_rng(generator, device)
    with rng:
        sequences = model.generate(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            mm_token_type_ids=batch.mm_token_type_ids.to(device),
            generation_config=hf_generation_config(gen, ids, num_return_sequences=1),
            **batch.vision.to(device).as_kwargs(),
        )  # [B*rows, P + C]
    return sequences[:, batch.input_ids.shape[1] :].repeat_interleave(G // rows, dim=0)  # [B*G, C]


class Sampler:
    """Next-token sampling with transformers' semantics: banned ids to -inf, logits / T, top-k
    (keep scores >= k-th best), top-p (drop the low tail whose mass is <= 1 - p, keep at least
    one), softmax, multinomial. T == 0: argmax."""

    def __init__(self, gen: GenerationConfig, banned: Tensor, generator: torch.Generator | None):
        self.temperature = gen.temperature
        self.top_k = gen.top_k
        self.top_p = gen.top_p
        self.banned = banned  # [n_banned] long
        self.generator = generator

    def distribution(self, logits: Tensor) -> Tensor:
        """Sampling probabilities [n, V] (fp32) from logits [n, V]; for T == 0, logits after banning."""
        scores = logits.float().index_fill(-1, self.banned, float("-inf"))  # [n, V]
        if self.temperature == 0:
            return scores
        scores = scores / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1).values[..., -1:]  # [n, 1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)  # [n, V]
            cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # [n, V]
            drop_sorted = cum <= (1 - self.top_p)
            drop_sorted[..., -1:] = False
            scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return scores.softmax(dim=-1)

    def __call__(self, logits: Tensor) -> Tensor:
        dist = self.distribution(logits)  # [n, V]
        if self.temperature == 0:
            return dist.argmax(dim=-1)
        return torch.multinomial(dist, 1, generator=self.generator).squeeze(1)  # [n] long

    def per_group(self, logits: Tensor, counts: list[int], generators: list[torch.Generator | None]) -> Tensor:
        """Next tokens [n] for rows that are consecutive blocks of `counts[b]` rows per group: one
        distribution over all rows, then each block drawn with its group's generator, exactly the
        draws the per-group decoder makes (a group with no live rows draws nothing)."""
        dist = self.distribution(logits)  # [n, V]
        if self.temperature == 0:
            return dist.argmax(dim=-1)
        blocks = dist.split(counts)  # B x [counts[b], V]
        draws = [torch.multinomial(d, 1, generator=g) for d, g, c in zip(blocks, generators, counts) if c]
        return torch.cat(draws).squeeze(1)  # [n] long
