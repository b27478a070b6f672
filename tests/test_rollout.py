"""generate_group: the shared-prefill decoder samples from the same distribution as G independent
generations (HF `generate` on the repeated prompt), never samples vision placeholders, and returns
consistent masks."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    NoBadWordsLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mmgrpo.config import GenerationConfig
from mmgrpo.models.loading import VISION_TOKENS, bad_words_ids
from mmgrpo.processors.sample import PromptInputs
from tests.prompts import make_prompt
from mmgrpo.trainer.rollout import Sampler, finalize, generate_group, prefill_shared, special_ids



pytestmark = pytest.mark.usefixtures("one_thread")



def with_logit_bias(model, bias: dict[int, float]):
    """A copy whose lm_head adds a constant to some token logits (to make EOS or placeholders likely)."""
    model = copy.deepcopy(model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        for token, b in bias.items():
            head.bias[token] = b
    model.lm_head = head
    return model.eval()


def repeated_first_logits(model, prompt: PromptInputs, G: int) -> torch.Tensor:
    """Next-token logits [G, V] of G independent copies of the prompt (vision inputs repeated)."""
    v = prompt.vision
    out = model(
        input_ids=prompt.input_ids.expand(G, -1),
        mm_token_type_ids=prompt.mm_token_type_ids.expand(G, -1),
        pixel_values_videos=v.pixel_values_videos.repeat(G, 1),
        video_grid_thw=v.video_grid_thw.repeat(G, 1),
        second_per_grid_ts=v.second_per_grid_ts.repeat(G),
    )
    return out.logits[:, -1].float()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 50, 0.9), (1.3, 0, 0.5)])
def test_first_step_distribution_matches_repeated(tiny, temperature, top_k, top_p):
    model, processor = tiny
    prompt = make_prompt(processor, ["video"])
    G = 4
    gen = GenerationConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    with torch.no_grad():
        _, logits, _ = prefill_shared(model, prompt, G)  # [G, V]
        ref_logits = repeated_first_logits(model, prompt, G)  # [G, V]
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    # transformers' own processors, in generate's order, on the repeated path
    procs = LogitsProcessorList([NoBadWordsLogitsProcessor(bad_words_ids(processor), eos_token_id=None)])
    procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    ref = procs(prompt.input_ids.expand(G, -1), ref_logits).softmax(-1)  # [G, V]
    banned = special_ids(model, processor).banned
    dist = Sampler(gen, banned, None).distribution(logits)  # [G, V]
    assert torch.allclose(dist, ref, atol=1e-6)
    assert int((dist[0] > 0).sum()) == int((ref[0] > 0).sum())  # same support after top-k / top-p
    # with a fixed generator the first sampled tokens are those drawn from the reference distribution
    one_step = GenerationConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    first = generate_group(model, processor, prompt, G, one_step, torch.Generator().manual_seed(5)).completion_ids[:, 0]
    expected = torch.multinomial(ref, 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
    assert torch.equal(first, expected)


@pytest.mark.parametrize("kinds", [["video"], ["image", "image"], ["video", "image"]])
def test_greedy_completions_identical_between_modes(tiny, kinds):
    model, processor = tiny
    prompt = make_prompt(processor, kinds)
    for gen in (GenerationConfig(max_new_tokens=16, top_k=1), GenerationConfig(max_new_tokens=16, temperature=0.0)):
        a = generate_group(model, processor, prompt, 3, gen, mode="shared")
        b = generate_group(model, processor, prompt, 3, gen, mode="repeat")
        assert torch.equal(a.completion_ids, b.completion_ids)
        assert a.texts == b.texts


def test_sampled_tokens_follow_their_own_context(tiny):
    """Completions that end at different steps (rows dropped from the shared cache): every sampled
    token is among the top-3 of a direct full-sequence forward of its own [prompt | completion],
    which a wrong cache row or position would violate almost surely (3 of ~575 tokens)."""
    model, processor = tiny
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = with_logit_bias(model, {eos: 0.55})  # EOS often in the top 3: lengths 2..20
    prompt = make_prompt(processor, ["video"])
    gen = GenerationConfig(max_new_tokens=20, top_k=3)
    r = generate_group(model, processor, prompt, 12, gen, generator=torch.Generator().manual_seed(0))
    lengths = r.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 4 and not r.truncated.all()
    banned = special_ids(model, processor).banned
    with torch.no_grad():
        for g in range(12):
            n = int(lengths[g])
            seq = torch.cat([prompt.input_ids[0], r.completion_ids[g, :n]]).view(1, -1)
            types = torch.cat([prompt.mm_token_type_ids[0], torch.zeros(n, dtype=torch.long)]).view(1, -1)
            logits = model(input_ids=seq, mm_token_type_ids=types, **prompt.vision.as_kwargs()).logits[0]
            logits = logits[prompt.length - 1 : -1]  # [n, V], predicting each completion token
            logits[:, banned] = float("-inf")
            top3 = logits.topk(3, dim=-1).indices  # [n, 3]
            assert (top3 == r.completion_ids[g, :n, None]).any(-1).all(), g


def test_vision_placeholders_never_sampled(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    model = with_logit_bias(model, {tok.convert_tokens_to_ids(t): 8.0 for t in VISION_TOKENS})
    prompt = make_prompt(processor, ["image"])
    banned = torch.tensor([tok.convert_tokens_to_ids(t) for t in VISION_TOKENS])
    for mode in ("shared", "repeat"):
        gen = GenerationConfig(max_new_tokens=8)
        r = generate_group(model, processor, prompt, 4, gen, torch.Generator().manual_seed(1), mode)
        assert not torch.isin(r.completion_ids, banned).any(), mode


def test_seeded_sampling_is_deterministic(tiny):
    model, processor = tiny
    prompt = make_prompt(processor, ["video"])
    gen = GenerationConfig(max_new_tokens=6)
    for mode in ("shared", "repeat"):
        a, b, c = (
            generate_group(model, processor, prompt, 4, gen, torch.Generator().manual_seed(s), mode) for s in (3, 3, 4)
        )
        assert torch.equal(a.completion_ids, b.completion_ids), mode
        assert not torch.equal(a.completion_ids, c.completion_ids), mode


def test_finalize_masks_and_truncation(tiny):
    model, processor = tiny
    ids = special_ids(model, processor)
    eos, pad = int(ids.eos[0]), ids.pad
    raw = torch.tensor([[70, 71, eos, 72], [70, 71, 72, 73], [eos, 80, 81, 82]])
    r = finalize(raw, ids, processor)
    assert r.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert r.truncated.tolist() == [False, True, False]
    assert r.completion_ids.tolist() == [[70, 71, eos, pad], [70, 71, 72, 73], [eos, pad, pad, pad]]
    assert r.texts[2] == "" and r.texts[0] == processor.tokenizer.decode([70, 71])
