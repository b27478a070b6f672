"""Every family, in float64: the shared log-prob forward (a 4-D-mask row, or for linear-attention
families the prompt's repeated cache) and the repeated rows equal plain full-sequence forwards of
each completion (log-probs and parameter gradients, deepstack and vision tower included); the
rollout sampler matches HF `generate` in distribution and greedy output; and the rollout, the
log-prob forward, evaluation and inference all place tokens at the same (original-rule) positions.

Tolerances, measured on this 2-core CPU (torch 2.14.1, transformers 5.24) and stated with their margin:
- `mask` families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE): as tests/test_model_logprobs.py,
  log-probs 1e-10 (measured <= 3.2e-16), gradients 1e-5 (measured <= 4.9e-7: transformers computes
  RMSNorm and the vision rotary embedding in float32 even in a float64 model, and the shared row
  sums G completions into one prompt activation in another order), sampling distributions 1e-12
  (measured <= 6.1e-16).
- `cache` families (Qwen3.5, Qwen3.5-MoE): transformers' gated delta rule computes in float32 in a
  float64 model (`torch_chunk_gated_delta_rule` casts), and a plain forward chunks the prompt and a
  completion (and left padding) differently from a completion continued from the prompt's state:
  measured max 2.7e-7 (log-probs), 1.1e-4 (gradients, relative per tensor: the smallest tensors
  carry the float32 noise), 3.2e-7 (sampling distributions); tolerances 3e-6, 1e-3 and 3e-6
  (margins 11, 9 and 9).
The mistakes the tests must catch (another video, completions that see each other) move log-probs
by more than 1e-3.
A gradient tensor's error is relative to its own largest entry, or to 1e-9 of the largest entry of
the whole gradient for tensors that are zero up to float32 underflow (Qwen3.5's decay parameters).
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LogitsProcessorList, NoBadWordsLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper

from mmgrpo.models.families import FAMILIES
from mmgrpo.models.generate import Sampler, Sampling, generate_groups, generate_texts, prefill_groups
from mmgrpo.models.logprobs import batch_logprobs, shared_layout
from mmgrpo.models.special import special_ids
from tests.prompts import make_prompt
from tests.rope_reference import full_sequence_positions
from tests.test_model_logprobs import as_double, direct_logprobs, make_completions

ALL = list(FAMILIES)
TOL = {"mask": (1e-10, 1e-5, 1e-12), "cache": (3e-6, 1e-3, 3e-6)}  # (log-probs, gradients, distributions): docstring
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def policy(family_model):
    """`policy(name)`: a float64 copy of the family's tiny model with weights scaled up, so that
    logits depend strongly on context (a wrong mask, position or state shows far above tolerance)."""
    made = {}

    def get(name):
        if name not in made:
            model, processor = family_model(name)
            model = copy.deepcopy(model).double()
            if FAMILIES[name].moe:  # grouped_mm (the default expert kernel) has no float64
                model.set_experts_implementation("eager")
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(3.0)
            made[name] = (model.eval(), processor)
        return made[name]

    return get


def lp(model, processor, prompts, ids, masks, mode):
    return batch_logprobs(model, prompts, ids, masks, mode, 1.0, processor.tokenizer.pad_token_id)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def grad_err(ga: dict, gb: dict) -> float:
    assert ga.keys() == gb.keys()
    floor = 1e-9 * max(float(g.abs().max()) for g in gb.values())
    return max(float((ga[k] - gb[k]).abs().max()) / max(float(gb[k].abs().max()), floor) for k in gb)


def grads(model, fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def tolerances(name: str) -> tuple[float, float, float]:
    return TOL[FAMILIES[name].shared_prefix]


@pytest.mark.parametrize("mode", ["shared", "repeat"])
@pytest.mark.parametrize("name", ALL)
def test_one_group_equals_direct(policy, name, mode):
    model, processor = policy(name)
    assert shared_layout(model) == FAMILIES[name].shared_prefix
    logp_tol, grad_tol, _ = tolerances(name)
    prompt = as_double(make_prompt(processor, ["video", "image"]))
    ids, mask = make_completions(processor, [7, 3, 11, 5], width=12)  # padding inside the rows
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = lp(model, processor, [prompt], [ids], [mask], mode)[0]
    assert (out[mask == 0] == 0).all()
    assert rel_err(out, direct_logprobs(model, prompt, ids, mask)) <= logp_tol
    g_ref = grads(model, lambda: (direct_logprobs(model, prompt, ids, mask) * weights).sum())
    g = grads(model, lambda: (lp(model, processor, [prompt], [ids], [mask], mode)[0] * weights * mask).sum())
    assert any(k.startswith("model.visual") for k in g), "no gradient reached the vision tower"
    if model.config.vision_config.to_dict().get("deepstack_visual_indexes"):
        assert any("deepstack_merger_list" in k for k in g), "no gradient reached the deepstack mergers"
    assert grad_err(g, g_ref) <= grad_tol


@pytest.mark.parametrize("name", ALL)
def test_mixed_batch_equals_direct(policy, name):
    """Three groups of different prompt and completion lengths in one shared forward."""
    model, processor = policy(name)
    logp_tol, grad_tol, _ = tolerances(name)
    prompts = [as_double(make_prompt(processor, k, seed=b)) for b, k in enumerate([["video"], ["image"], ["image", "image"]])]
    comps = [make_completions(processor, n, w, seed=b) for b, (n, w) in enumerate([([7, 3, 1], 8), ([2, 4, 5], 5),
                                                                                   ([9, 9, 2], 10)])]
    ids, masks = [c[0] for c in comps], [c[1] for c in comps]
    weights = [torch.randn(i.shape, generator=torch.Generator().manual_seed(b), dtype=torch.float64) for b, i in enumerate(ids)]
    with torch.no_grad():
        out = lp(model, processor, prompts, ids, masks, "shared")
    for b in range(3):
        assert rel_err(out[b], direct_logprobs(model, prompts[b], ids[b], masks[b])) <= logp_tol, b
    g_ref = grads(model, lambda: sum((direct_logprobs(model, p, i, m) * w).sum()
                                     for p, i, m, w in zip(prompts, ids, masks, weights)))
    g = grads(model, lambda: sum((x * w).sum() for x, w in zip(lp(model, processor, prompts, ids, masks, "shared"), weights)))
    assert grad_err(g, g_ref) <= grad_tol


@pytest.mark.parametrize("name", ALL)
def test_tolerance_detects_mistakes(policy, name):
    """Other video pixels, or completions that see each other ([prompt | c_1 | c_2] as one causal
    row), move log-probs far beyond the tolerance."""
    model, processor = policy(name)
    prompt = as_double(make_prompt(processor, ["video"]))
    ids, mask = make_completions(processor, [6, 6], width=6)
    with torch.no_grad():
        ref = direct_logprobs(model, prompt, ids, mask)
        other = copy.deepcopy(prompt)
        other.vision.pixel_values_videos = torch.zeros_like(prompt.vision.pixel_values_videos)
        assert rel_err(lp(model, processor, [other], [ids], [mask], "shared")[0], ref) > 1e-3
        seq = torch.cat([prompt.input_ids, ids.view(1, -1)], dim=1)  # [1, P + 12]
        types = torch.cat([prompt.mm_token_type_ids, torch.zeros_like(ids.view(1, -1))], dim=1)
        logits = model(input_ids=seq, mm_token_type_ids=types, position_ids=full_sequence_positions(model, prompt, 12),
                       **prompt.vision.as_kwargs()).logits[0]  # [P + 12, V]
    leaky = torch.log_softmax(logits[prompt.length + 6 : -1], -1).gather(-1, ids[1, 1:, None]).squeeze(-1)
    assert rel_err(leaky, ref[1, 1:]) > 1e-3


@pytest.mark.parametrize("name", ALL)
def test_sampling_matches_hf_generate(family_model, policy, name):
    """The first-step sampling distribution equals transformers' warpers on G repeated prompts
    (float64), and greedy rollouts (shared and repeat) equal HF `generate` given the original-rule
    positions."""
    model, processor = policy(name)
    prompts = [as_double(make_prompt(processor, k, seed=b)) for b, k in enumerate([["video"], ["image", "video"]])]
    special = special_ids(model, processor.tokenizer)
    s = Sampling(4, temperature=0.7, top_p=1.0, top_k=20)
    with torch.no_grad():
        _, logits, _ = prefill_groups(model, prompts, 3, special.pad)  # [B*G, V]
        for b, p in enumerate(prompts):
            ref = model(input_ids=p.input_ids, mm_token_type_ids=p.mm_token_type_ids,
                        position_ids=full_sequence_positions(model, p, 0), **p.vision.as_kwargs()).logits[:, -1]  # [1, V]
            procs = LogitsProcessorList([NoBadWordsLogitsProcessor([[t] for t in special.banned], eos_token_id=None),
                                         TemperatureLogitsWarper(0.7), TopKLogitsWarper(20)])
            want = procs(p.input_ids, ref).softmax(-1).expand(3, -1)  # [G, V]
            got = Sampler(s, special.banned_tensor("cpu")).distribution(logits[3 * b : 3 * b + 3])
            assert torch.allclose(got.double(), want, atol=tolerances(name)[2], rtol=0)
            assert int((got[0] > 0).sum()) == int((want[0] > 0).sum())  # same support after top-k
    model, processor = family_model(name)  # float32: greedy decoding as it runs in training
    special = special_ids(model, processor.tokenizer)
    prompt = make_prompt(processor, ["video", "image"], frames=16)
    with torch.no_grad():
        hf = model.generate(input_ids=prompt.input_ids, attention_mask=torch.ones_like(prompt.input_ids),
                            position_ids=full_sequence_positions(model, prompt, 0),
                            mm_token_type_ids=prompt.mm_token_type_ids, do_sample=False, max_new_tokens=10,
                            repetition_penalty=1.0, eos_token_id=list(special.eos), pad_token_id=special.pad,
                            bad_words_ids=[[t] for t in special.banned], **prompt.vision.as_kwargs())[0, prompt.length:]
    for mode in ("shared", "repeat"):
        r = generate_groups(model, processor.tokenizer, special, [prompt], 2, Sampling(10, 0.0, 1.0, 0),
                            [torch.Generator().manual_seed(0)], mode)[0]
        n = int(r.completion_mask[0].sum())
        assert torch.equal(r.completion_ids[0, :n], hf[:n]) and (n == len(hf) or r.truncated[0]), mode


@pytest.mark.parametrize("name", ALL)
def test_rollout_logprobs_eval_and_infer_agree(family_model, name):
    """On a 16-frame video (where transformers' own positions differ for Qwen2-VL / Qwen2.5-VL), the
    greedy rollout, evaluation's and inference's HF `generate` give the same tokens, and the
    log-prob forward scores them exactly as `generate` computed them."""
    from mmgrpo.models.infer import greedy_answer

    model, processor = family_model(name)
    tok = processor.tokenizer
    special = special_ids(model, tok)
    prompt = make_prompt(processor, ["video"], frames=16, fps=2.0)
    sampling = Sampling(8, 0.0, 1.0, 0)
    rollout = generate_groups(model, tok, special, [prompt], 2, sampling, [torch.Generator().manual_seed(0)], "shared")[0]
    evaluated = generate_texts(model, tok, special, [prompt], sampling, num_samples=1, seed=None)
    assert evaluated.texts[0] == rollout.texts[0]
    assert greedy_answer(model, processor, prompt, 8) == rollout.texts[0].strip()
    ids, mask = rollout.completion_ids[:1], rollout.completion_mask[:1]  # [1, C]
    with torch.no_grad():
        from mmgrpo.models.layout import collate_prompts
        from mmgrpo.models.generate import hf_generation_config
        from mmgrpo.models.layout import rope_positions

        batch = collate_prompts([prompt], special.pad, 1)
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=rope_positions(model, batch)[0], mm_token_type_ids=batch.mm_token_type_ids,
                             generation_config=hf_generation_config(sampling, special), output_logits=True,
                             return_dict_in_generate=True, **batch.vision.as_kwargs())
        steps = torch.stack(out.logits, dim=1)[0].double().log_softmax(-1)  # [C, V]
        want = steps.gather(-1, ids[0, :, None]).squeeze(-1) * mask[0]  # [C]
        for mode in ("shared", "repeat"):
            got = batch_logprobs(model, [prompt], [ids], [mask], mode, 1.0, special.pad)[0][0]
            assert (got.double() - want).abs().max() <= 1e-4, mode


def test_cache_family_falls_back_under_gradient_checkpointing(policy, monkeypatch, caplog):
    """transformers drops the cache of checkpointed layers in a training forward, so a cache family
    then runs shared mode as repeated rows (vision tower once), says so in the log, and still
    equals the direct forwards."""
    from mmgrpo.models import logprobs as logprobs_mod

    model, processor = policy("qwen3_5")
    model = copy.deepcopy(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert shared_layout(model) == "repeat rows (gradient checkpointing drops the prompt's cache)"
    with torch.no_grad():
        assert shared_layout(model) == "cache"  # no backward to replay: the cache path runs
    monkeypatch.setattr(logprobs_mod, "_warned", set())
    prompt = as_double(make_prompt(processor, ["video"]))
    ids, mask = make_completions(processor, [5, 2], width=5)
    with caplog.at_level("WARNING", logger="mmgrpo.models.logprobs"):
        out = lp(model, processor, [prompt], [ids], [mask], "shared")[0]
    assert "Qwen3.5 runs as repeat rows (gradient checkpointing" in caplog.text
    with torch.no_grad():
        assert rel_err(out, direct_logprobs(model, prompt, ids, mask)) <= tolerances("qwen3_5")[0]


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.shared_prefix == "cache"])
def test_finished_rows_leave_the_recurrent_cache(family_model, name):
    """With EOS made likely, completions end at different steps and their rows leave the cache
    (conv and recurrent states too): each group still samples exactly what it samples alone, and
    every token is among the top 3 of a plain forward of its own [prompt | completion]."""
    from tests.test_model_generate import with_logit_bias

    model, processor = family_model(name)
    model = with_logit_bias(model, {processor.tokenizer.convert_tokens_to_ids("<|im_end|>"): 0.55})
    special = special_ids(model, processor.tokenizer)
    prompts = [make_prompt(processor, k, seed=b) for b, k in enumerate([["video"], ["image"], ["image", "video"]])]
    s = Sampling(12, temperature=1.0, top_p=1.0, top_k=3)
    seeds = [torch.Generator().manual_seed(10 + b) for b in range(3)]
    batched = generate_groups(model, processor.tokenizer, special, prompts, 4, s, seeds, "shared")
    lengths = torch.cat([r.completion_mask.sum(1) for r in batched]).tolist()
    assert len(set(lengths)) > 3  # rows really left the cache at different steps
    for b in range(3):
        alone = generate_groups(model, processor.tokenizer, special, prompts[b : b + 1], 4, s,
                                [torch.Generator().manual_seed(10 + b)], "shared")[0]
        assert torch.equal(batched[b].completion_ids, alone.completion_ids), b
    r, p = batched[0], prompts[0]
    with torch.no_grad():
        for g in range(4):
            n = int(r.completion_mask[g].sum())
            seq = torch.cat([p.input_ids[0], r.completion_ids[g, :n]]).view(1, -1)
            types = torch.cat([p.mm_token_type_ids[0], torch.zeros(n, dtype=torch.long)]).view(1, -1)
            logits = model(input_ids=seq, mm_token_type_ids=types, position_ids=full_sequence_positions(model, p, n),
                           **p.vision.as_kwargs()).logits[0, p.length - 1 : -1]  # [n, V]
            logits[:, list(special.banned)] = float("-inf")
            assert (logits.topk(3, dim=-1).indices == r.completion_ids[g, :n, None]).any(-1).all(), g
