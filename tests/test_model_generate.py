"""models.generate: the batched group sampler draws from the distribution HF `generate` draws from
(transformers' own warpers as the oracle), gives HF's greedy output, never samples vision
placeholders, keeps each group independent of the rest of the batch, and returns consistent masks.

Logit comparisons use the tiny model in float64: between the shared prefill and G repeated prompts
the measured max |difference| is 5.6e-16, tolerance 1e-10; the sampling distributions are then
compared in float64 to 1e-12."""
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
from mmgrpo.models.generate import Sampler, Sampling, finalize, generate_groups, prefill_groups
from mmgrpo.models.special import VISION_TOKENS, special_ids
from mmgrpo.processors.sample import PromptInputs
from tests.prompts import make_prompt
from tests.rope_reference import full_sequence_positions

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = [["video"], ["image"], ["image", "image"]]  # a mixed batch: prompt lengths 48 / 38 / 46


def sampling(**kw) -> Sampling:
    return Sampling.of(GenerationConfig(**kw))


def greedy(max_new_tokens: int) -> Sampling:
    return Sampling(max_new_tokens, temperature=0.0, top_p=1.0, top_k=0)


def seeded(n: int, base: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + b) for b in range(n)]


def generate(model, processor, prompts, G, s: Sampling, generators, mode="shared"):
    return generate_groups(model, processor.tokenizer, special_ids(model, processor.tokenizer), prompts, G, s,
                           generators, mode)


def with_logit_bias(model, bias: dict[int, float]):
    """A copy whose lm_head adds a constant to some token logits (to make EOS or placeholders likely)."""
    model = copy.deepcopy(model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True,
                           dtype=model.lm_head.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        for token, b in bias.items():
            head.bias[token] = b
    model.lm_head = head
    return model.eval()


@pytest.fixture(scope="module")
def double(tiny):
    return copy.deepcopy(tiny[0]).double().eval(), tiny[1]


@pytest.fixture(scope="module")
def varied(tiny):
    """The tiny model with EOS made likely: completions end at many different steps, so rows leave
    the shared cache at different times in every group."""
    model, processor = tiny
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    return with_logit_bias(model, {eos: 0.55}), processor


def as_double(p: PromptInputs) -> PromptInputs:
    return PromptInputs(p.sample, p.input_ids, p.mm_token_type_ids, p.vision.to("cpu", torch.float64))


def repeated_first_logits(model, prompt: PromptInputs, G: int) -> torch.Tensor:
    """Next-token logits [G, V] of G independent copies of the prompt (vision inputs repeated)."""
    v = prompt.vision
    kw = {}
    if v.pixel_values is not None:
        kw.update(pixel_values=v.pixel_values.repeat(G, 1), image_grid_thw=v.image_grid_thw.repeat(G, 1))
    if v.pixel_values_videos is not None:
        kw.update(pixel_values_videos=v.pixel_values_videos.repeat(G, 1), video_grid_thw=v.video_grid_thw.repeat(G, 1),
                  second_per_grid_ts=v.second_per_grid_ts.repeat(G))
    out = model(input_ids=prompt.input_ids.expand(G, -1), mm_token_type_ids=prompt.mm_token_type_ids.expand(G, -1),
                position_ids=full_sequence_positions(model, prompt, 0).expand(3, G, -1), **kw)
    return out.logits[:, -1]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 50, 0.9), (1.3, 0, 0.5)])
def test_first_step_distribution_matches_hf(double, temperature, top_k, top_p):
    model, processor = double
    prompts = [as_double(make_prompt(processor, kinds, seed=b)) for b, kinds in enumerate(KINDS)]
    G = 4
    s = sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    special = special_ids(model, processor.tokenizer)
    with torch.no_grad():
        _, logits, _ = prefill_groups(model, prompts, G, special.pad)  # [B*G, V]
        for b, prompt in enumerate(prompts):
            ref_logits = repeated_first_logits(model, prompt, G)  # [G, V]
            assert (logits[b * G : (b + 1) * G].double() - ref_logits).abs().max() <= 1e-10
            # transformers' own processors, in generate's order, on the repeated path
            banned_ids = [[t] for t in special.banned]
            procs = LogitsProcessorList([NoBadWordsLogitsProcessor(banned_ids, eos_token_id=None),
                                         TemperatureLogitsWarper(temperature)])
            if top_k:
                procs.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                procs.append(TopPLogitsWarper(top_p))
            ref = procs(prompt.input_ids.expand(G, -1), ref_logits).softmax(-1)  # [G, V] float64
            dist = Sampler(s, special.banned_tensor("cpu")).distribution(logits[b * G : (b + 1) * G])  # [G, V]
            assert torch.allclose(dist.double(), ref, atol=1e-12)
            assert int((dist[0] > 0).sum()) == int((ref[0] > 0).sum())  # same support after top-k / top-p


def test_first_tokens_are_draws_from_the_distribution(tiny):
    """With a fixed generator, the first sampled tokens are those drawn from the distribution."""
    model, processor = tiny
    prompt = make_prompt(processor, ["video"])
    G, s = 4, sampling(max_new_tokens=1, temperature=0.7, top_k=50, top_p=0.9)
    special = special_ids(model, processor.tokenizer)
    with torch.no_grad():
        _, logits, _ = prefill_groups(model, [prompt], G, special.pad)
    dist = Sampler(s, special.banned_tensor("cpu")).distribution(logits)
    first = generate(model, processor, [prompt], G, s, [torch.Generator().manual_seed(5)])[0].completion_ids[:, 0]
    expected = torch.multinomial(dist, 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
    assert torch.equal(first, expected)


@pytest.mark.parametrize("kinds", [["video"], ["image", "image"], ["video", "image"]])
def test_greedy_equals_hf_generate(tiny, kinds):
    model, processor = tiny
    prompt = make_prompt(processor, kinds)
    tok = processor.tokenizer
    special = special_ids(model, tok)
    with torch.no_grad():
        hf = model.generate(input_ids=prompt.input_ids, attention_mask=torch.ones_like(prompt.input_ids),
                            position_ids=full_sequence_positions(model, prompt, 0),
                            mm_token_type_ids=prompt.mm_token_type_ids, do_sample=False, max_new_tokens=16,
                            repetition_penalty=1.0, eos_token_id=list(special.eos), pad_token_id=special.pad,
                            bad_words_ids=[[t] for t in special.banned], **prompt.vision.as_kwargs())
    oracle = hf[0, prompt.length :]
    for s in (sampling(max_new_tokens=16, top_k=1), greedy(16)):
        for mode in ("shared", "repeat"):
            r = generate(model, processor, [prompt], 3, s, [torch.Generator().manual_seed(0)], mode)[0]
            n = int(r.completion_mask[0].sum())
            assert torch.equal(r.completion_ids[0, :n], oracle[:n]) and (n == len(oracle) or r.truncated[0]), mode
            assert len(set(r.texts)) == 1


def test_sampled_tokens_follow_their_own_context(tiny):
    """Completions that end at different steps (rows dropped from the shared cache): every sampled
    token is among the top-3 of a direct full-sequence forward of its own [prompt | completion],
    which a wrong cache row or position would violate almost surely (3 of ~575 tokens)."""
    model, processor = tiny
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = with_logit_bias(model, {eos: 0.55})  # EOS often in the top 3: lengths 2..20
    prompt = make_prompt(processor, ["video"])
    r = generate(model, processor, [prompt], 12, sampling(max_new_tokens=20, top_k=3), [torch.Generator().manual_seed(0)])[0]
    lengths = r.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 4 and not r.truncated.all()
    banned = list(special_ids(model, processor.tokenizer).banned)
    with torch.no_grad():
        for g in range(12):
            n = int(lengths[g])
            seq = torch.cat([prompt.input_ids[0], r.completion_ids[g, :n]]).view(1, -1)
            types = torch.cat([prompt.mm_token_type_ids[0], torch.zeros(n, dtype=torch.long)]).view(1, -1)
            logits = model(input_ids=seq, mm_token_type_ids=types, position_ids=full_sequence_positions(model, prompt, n),
                           **prompt.vision.as_kwargs()).logits[0]
            logits = logits[prompt.length - 1 : -1]  # [n, V], predicting each completion token
            logits[:, banned] = float("-inf")
            top3 = logits.topk(3, dim=-1).indices  # [n, 3]
            assert (top3 == r.completion_ids[g, :n, None]).any(-1).all(), g


def test_vision_placeholders_never_sampled(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    biased = with_logit_bias(model, {tok.convert_tokens_to_ids(t): 8.0 for t in VISION_TOKENS})
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    banned = torch.tensor([tok.convert_tokens_to_ids(t) for t in VISION_TOKENS])
    for mode in ("shared", "repeat"):
        out = generate(biased, processor, prompts, 4, sampling(max_new_tokens=8), seeded(3), mode)
        for r in out:
            assert r.completion_ids.shape[0] == 4 and not torch.isin(r.completion_ids, banned).any(), mode


def test_seeded_sampling_is_deterministic(tiny):
    model, processor = tiny
    prompt = make_prompt(processor, ["video"])
    s = sampling(max_new_tokens=6)
    for mode in ("shared", "repeat"):
        a, b, c = (generate(model, processor, [prompt], 4, s, [torch.Generator().manual_seed(k)], mode)[0]
                   for k in (3, 3, 4))
        assert torch.equal(a.completion_ids, b.completion_ids), mode
        assert not torch.equal(a.completion_ids, c.completion_ids), mode


@pytest.mark.parametrize("s", [greedy(16), sampling(max_new_tokens=16, top_k=3),
                               sampling(max_new_tokens=16, temperature=0.7, top_k=10, top_p=0.8)],
                         ids=["greedy", "top_k", "top_k_top_p"])
def test_group_samples_do_not_depend_on_the_batch(varied, s):
    """A group's completions, masks and width are a function of its prompt and generator only."""
    model, processor = varied
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    batched = generate(model, processor, prompts, 6, s, seeded(3))
    for b in range(3):
        alone = generate(model, processor, prompts[b : b + 1], 6, s, seeded(3)[b : b + 1])[0]
        assert torch.equal(batched[b].completion_ids, alone.completion_ids), b
        assert torch.equal(batched[b].completion_mask, alone.completion_mask), b
        assert torch.equal(batched[b].truncated, alone.truncated) and batched[b].texts == alone.texts
    lengths = torch.cat([r.completion_mask.sum(1) for r in batched]).tolist()
    if s.temperature > 0:
        assert len(set(lengths)) > 4  # rows really left the cache at different steps
    else:
        assert len({r.completion_ids.shape[1] for r in batched}) == 3  # groups of different widths


def test_finalize_masks_and_truncation(tiny):
    model, processor = tiny
    special = special_ids(model, processor.tokenizer)
    eos, pad = special.eos[0], special.pad
    raw = torch.tensor([[70, 71, eos, 72], [70, 71, 72, 73], [eos, 80, 81, 82]])
    r = finalize(raw, special, processor.tokenizer)
    assert r.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert r.truncated.tolist() == [False, True, False]
    assert r.completion_ids.tolist() == [[70, 71, eos, pad], [70, 71, 72, 73], [eos, pad, pad, pad]]
    assert r.texts[2] == "" and r.texts[0] == processor.tokenizer.decode([70, 71])


def test_bad_calls_are_refused(tiny):
    model, processor = tiny
    prompts = [make_prompt(processor, ["image"])]
    with pytest.raises(ValueError, match="generators"):
        generate(model, processor, prompts, 2, greedy(3), [])
    with pytest.raises(ValueError, match="mode"):
        generate(model, processor, prompts, 2, greedy(3), seeded(1), "packed")


def test_special_ids(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    special = special_ids(model, tok)
    assert special.eos == (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"))
    assert special.pad == tok.pad_token_id
    assert set(special.banned) == {tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}


def test_vision_tower_runs_once_per_rollout(tiny):
    """The prefill encodes every prompt's media in one tower call, whatever G."""
    from tests.test_model_logprobs import TowerCalls, total_patches

    model, processor = tiny
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    with torch.no_grad(), TowerCalls(model) as calls:
        generate(model, processor, prompts, 4, greedy(3), seeded(3))
    assert calls.patches == [total_patches(prompts)]


def test_greedy_hf_generate_takes_no_sampling_flag_from_the_checkpoint(tiny):
    """Greedy decoding (eval, infer) sets every sampling flag itself: one left unset was filled from
    the checkpoint's generation_config (Qwen2.5-VL ships top_k=1, top_p=0.001) and transformers then
    warned that the flags are ignored. (The warning is logged once per process: run alone, this fails without the fix.)"""
    import logging

    from mmgrpo.models.generate import generate_texts

    model, processor = tiny
    model = copy.deepcopy(model)
    model.generation_config.update(top_k=1, top_p=0.001, temperature=0.1)  # as released checkpoints ship it
    special = special_ids(model, processor.tokenizer)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        out = generate_texts(model, processor.tokenizer, special, [make_prompt(processor, ["image"])], greedy(4),
                             num_samples=1, seed=0)
    finally:
        logger.removeHandler(handler)
    assert len(out.texts) == 1
    assert not [r for r in records if "generation flags are not valid" in r.getMessage()]
