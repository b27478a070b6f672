"""Batched groups: `batch_logprobs` and `generate_groups` give, for every group, what the per-group
functions give (`group_logprobs`, `generate_group`, themselves tested against independent forwards),
on a mixed batch: a video prompt, an image prompt and a two-image prompt of different lengths."""
from __future__ import annotations

import sys

import pytest
import torch

from mmgrpo.config import GenerationConfig
from mmgrpo.models.loading import VISION_TOKENS
from mmgrpo.trainer import logprobs as logprobs_mod
from mmgrpo.trainer.logprobs import batch_logprobs, group_logprobs
from mmgrpo.trainer.rollout import Sampler, generate_group, generate_groups, prefill_groups, prefill_shared, special_ids
from tests.prompts import make_prompt
from tests.test_logprobs import (  # noqa: F401  (policy: fixture)
    REL_TOL,
    TowerCalls,
    grads_of,
    make_completions,
    max_grad_rel_err,
    policy,
    rel_err,
)
from tests.test_rollout import with_logit_bias

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = [["video"], ["image"], ["image", "image"]]  # prompt lengths 48 / 38 / 46 on the tiny model
LENGTHS = [([7, 3, 11, 5], 12), ([2, 4, 1, 3], 5), ([9, 9, 2, 6], 10)]  # completion lengths, width per group


def mixed_batch(processor):
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    comps = [make_completions(processor, lengths, width, seed=b) for b, (lengths, width) in enumerate(LENGTHS)]
    return prompts, [c[0] for c in comps], [c[1] for c in comps]


def per_group(model, prompts, ids, masks, **kw):
    return [group_logprobs(model, p, i, m, **kw) for p, i, m in zip(prompts, ids, masks)]


def total_patches(prompts) -> int:
    v = [p.vision for p in prompts]
    return sum(x.shape[0] for p in v for x in (p.pixel_values, p.pixel_values_videos) if x is not None)


def test_mixed_batch_is_mixed(policy):
    prompts, ids, _ = mixed_batch(policy[1])
    assert len({p.length for p in prompts}) == 3 and len({i.shape[1] for i in ids}) == 3


@pytest.mark.parametrize("mode", ["shared", "repeat"])
def test_batch_logprobs_and_gradients_equal_per_group(policy, mode):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    weights = [torch.randn(i.shape, generator=torch.Generator().manual_seed(10 + b)) for b, i in enumerate(ids)]
    with torch.no_grad():
        ref = per_group(model, prompts, ids, masks)
        out = batch_logprobs(model, prompts, ids, masks, mode=mode)
    for b, (lp, r) in enumerate(zip(out, ref)):
        assert lp.shape == ids[b].shape and (lp[masks[b] == 0] == 0).all()
        assert rel_err(lp, r) <= REL_TOL, b

    def loss(fn):
        return lambda: sum((lp * w).sum() for lp, w in zip(fn(), weights))

    g_ref = grads_of(model, loss(lambda: per_group(model, prompts, ids, masks)))
    g = grads_of(model, loss(lambda: batch_logprobs(model, prompts, ids, masks, mode=mode)))
    assert any(k.startswith("model.visual") for k in g), "no gradient reached the vision tower"
    assert max_grad_rel_err(g, g_ref) <= REL_TOL


def test_rows_are_independent_and_see_their_own_media(policy):
    """Another image in group 1 moves group 1's log-probs far beyond the tolerance (a media mix-up
    between rows would be caught) and leaves the other groups' log-probs unchanged."""
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    with torch.no_grad():
        ref = per_group(model, prompts, ids, masks)
        swapped = [prompts[0], make_prompt(processor, ["image"], seed=5), prompts[2]]
        out = batch_logprobs(model, swapped, ids, masks)
    assert rel_err(out[1], ref[1]) > 1e-3
    assert rel_err(out[0], ref[0]) <= REL_TOL and rel_err(out[2], ref[2]) <= REL_TOL


def test_temperature_and_empty_groups(policy):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    masks = [masks[0], torch.zeros_like(masks[1]), masks[2]]  # group 1: nothing to score
    with torch.no_grad():
        out = batch_logprobs(model, prompts, ids, masks, temperature=0.7)
        ref = per_group(model, prompts, ids, masks, temperature=0.7)
    assert (out[1] == 0).all() and out[1].shape == ids[1].shape
    assert rel_err(out[0], ref[0]) <= REL_TOL and rel_err(out[2], ref[2]) <= REL_TOL
    empty = batch_logprobs(model, prompts[:1], ids[:1], [torch.zeros_like(masks[0])])
    assert (empty[0] == 0).all()


def test_vision_tower_runs_once_per_batched_call(policy, monkeypatch):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    everything = total_patches(prompts)  # images and videos of all three prompts
    G = ids[0].shape[0]
    with torch.no_grad():
        with TowerCalls(model) as calls:
            batch_logprobs(model, prompts, ids, masks, mode="shared")
        assert calls.patches == [everything]
        with TowerCalls(model) as calls:
            ref = batch_logprobs(model, prompts, ids, masks, mode="repeat")
        assert sum(calls.patches) == G * everything  # the baseline: media repeated per row
        # attention without 4-D masks (flash_attention_2): B*G rows, one vision-tower run
        monkeypatch.setattr(logprobs_mod, "supports_4d_mask", lambda m: False)
        with TowerCalls(model) as calls:
            fallback = batch_logprobs(model, prompts, ids, masks, mode="shared")
        assert calls.patches == [everything]
        with TowerCalls(model) as calls:
            generate_groups(model, processor, prompts, 2, GenerationConfig(max_new_tokens=3), [None] * 3)
        assert calls.patches == [everything]  # rollout prefill: once for the whole batch
    assert all(rel_err(a, b) <= REL_TOL for a, b in zip(fallback, ref))


def test_bad_batches_are_refused(policy):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    with pytest.raises(ValueError, match="mode"):
        batch_logprobs(model, prompts, ids, masks, mode="packed")
    with pytest.raises(ValueError, match="3 prompts"):
        batch_logprobs(model, prompts, ids[:2], masks[:2])
    with pytest.raises(ValueError, match="group 1"):
        batch_logprobs(model, prompts, ids, [masks[0], masks[1][:, :2], masks[2]])
    with pytest.raises(ValueError, match="same number of completions"):
        batch_logprobs(model, prompts, [ids[0][:2], ids[1], ids[2]], [masks[0][:2], masks[1], masks[2]], mode="repeat")
    with pytest.raises(ValueError, match="generators"):
        generate_groups(model, processor, prompts, 2, GenerationConfig(), [None])


# ---------------------------------------------------------------- rollout


@pytest.fixture(scope="module")
def varied(tiny):
    """The tiny model with EOS made likely: completions end at many different steps, so rows leave
    the shared cache at different times in every group."""
    model, processor = tiny
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    return with_logit_bias(model, {eos: 0.55}), processor


def seeded(n: int, base: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + b) for b in range(n)]


@pytest.mark.parametrize(
    "gen",
    [
        GenerationConfig(max_new_tokens=16, temperature=0.0),
        GenerationConfig(max_new_tokens=16, top_k=3),
        GenerationConfig(max_new_tokens=16, temperature=0.7, top_k=10, top_p=0.8),
    ],
    ids=["greedy", "top_k", "top_k_top_p"],
)
def test_generate_groups_equals_generate_group(varied, gen):
    """Same per-group generators -> the same completions, masks and widths as one group at a time."""
    model, processor = varied
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    G = 6
    batched = generate_groups(model, processor, prompts, G, gen, seeded(3))
    single = [generate_group(model, processor, p, G, gen, g) for p, g in zip(prompts, seeded(3))]
    for b, (r, s) in enumerate(zip(batched, single)):
        assert torch.equal(r.completion_ids, s.completion_ids), b
        assert torch.equal(r.completion_mask, s.completion_mask) and torch.equal(r.truncated, s.truncated), b
        assert r.texts == s.texts
    lengths = torch.cat([r.completion_mask.sum(1) for r in batched]).tolist()
    if gen.temperature > 0:
        assert len(set(lengths)) > 4  # rows really left the cache at different steps
    else:
        assert len({r.completion_ids.shape[1] for r in batched}) == 3  # groups of different widths


def test_first_step_distribution_matches_per_group(tiny):
    model, processor = tiny
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    G = 2
    gen = GenerationConfig(temperature=0.8, top_k=20, top_p=0.95)
    banned = special_ids(model, processor).banned
    with torch.no_grad():
        _, logits, batch = prefill_groups(model, prompts, G, pad_id=0)  # [B*G, V]
        for b, p in enumerate(prompts):
            _, ref, next_pos = prefill_shared(model, p, G)  # [G, V]
            assert int(batch.next_pos[b]) == next_pos
            assert torch.allclose(logits[b * G : (b + 1) * G], ref, atol=1e-5, rtol=1e-5)
            dist, ref_dist = (Sampler(gen, banned, None).distribution(x) for x in (logits[b * G : (b + 1) * G], ref))
            assert torch.allclose(dist, ref_dist, atol=1e-6)


def test_group_samples_do_not_depend_on_the_batch(varied):
    """A group's completions are a function of its prompt and its generator only."""
    model, processor = varied
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    gen = GenerationConfig(max_new_tokens=10, top_k=3)
    full = generate_groups(model, processor, prompts, 4, gen, seeded(3))
    alone = generate_groups(model, processor, prompts[2:], 4, gen, seeded(3)[2:])
    assert torch.equal(full[2].completion_ids, alone[0].completion_ids)


def test_repeat_mode(tiny):
    """The HF `generate` baseline: greedy equals the per-group result; sampling is seeded, never
    produces vision placeholders, and returns G completions per group."""
    model, processor = tiny
    prompts = [make_prompt(processor, kinds, seed=b) for b, kinds in enumerate(KINDS)]
    greedy = GenerationConfig(max_new_tokens=8, temperature=0.0)
    batched = generate_groups(model, processor, prompts, 3, greedy, [None] * 3, mode="repeat")
    for r, p in zip(batched, prompts):
        assert torch.equal(r.completion_ids, generate_group(model, processor, p, 3, greedy, mode="repeat").completion_ids)
    biased = with_logit_bias(model, {processor.tokenizer.convert_tokens_to_ids(t): 8.0 for t in VISION_TOKENS})
    gen = GenerationConfig(max_new_tokens=6)
    a, b = (generate_groups(biased, processor, prompts, 4, gen, seeded(3), mode="repeat") for _ in range(2))
    banned = special_ids(model, processor).banned
    for x, y in zip(a, b):
        assert x.completion_ids.shape[0] == 4 and torch.equal(x.completion_ids, y.completion_ids)
        assert not torch.isin(x.completion_ids, banned).any()


# ---------------------------------------------------------------- benchmark code path


def test_bench_step_runs_both_modes(monkeypatch):
    """scripts/bench_step.py's training step (no timing asserted): both modes train, and the token
    bookkeeping shows what `repeat` repeats (G copies of every prompt's media)."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"
    spec = importlib.util.spec_from_file_location("bench_step", path)
    bs = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_step", bs)  # dataclasses look their module up
    spec.loader.exec_module(bs)
    shape = bs.Shape("s", "video", 4, 56, 3)
    s = bs.setup(dataclasses.replace(bs.PRESETS["tiny"], shapes={"s": shape}), torch.device("cpu"))
    prompts = bs.make_prompts(s.processor, shape, 2, seed=0)
    gen = GenerationConfig(num_generations=3, max_new_tokens=shape.max_new_tokens)
    before = [p.detach().clone() for p in s.policy.parameters() if p.requires_grad]
    counts = {}
    for mode in ("repeat", "shared"):
        phases, rollouts = bs.train_step(s, prompts, gen, mode, step=0)
        assert set(phases) == {"rollout", "reference", "policy_fwd_bwd", "optimizer"}
        counts[mode] = bs.token_counts(prompts, rollouts, 3, mode)
    after = [p for p in s.policy.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert counts["repeat"]["vision_patches_per_pass"] == 3 * counts["shared"]["vision_patches_per_pass"]
    assert counts["repeat"]["lm_tokens_step"] > counts["shared"]["lm_tokens_step"]
    assert counts["repeat"]["prompt_tokens"] == counts["shared"]["prompt_tokens"] == sum(p.length for p in prompts)
