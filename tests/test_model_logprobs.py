"""models.logprobs.batch_logprobs: the shared-prefix rows and the repeated rows equal independent
full-sequence forwards of each completion (log-probs and parameter gradients), for one group and for
a mixed batch; the vision tower runs in every call, once per call in the shared path.

Everything runs with the tiny model in double precision, so the tolerances hold on any BLAS, thread
count or torch build. Log-probs: max relative error measured 2.5e-16 over the one-group cases (torch
2.14.1, 2-core CPU); LOGP_TOL = 1e-10 leaves a margin of over 1e4. Gradients: transformers computes
RMSNorm and the vision rotary embedding in float32 even in a float64 model, so gradients that sum
the G completions into one prompt activation (the shared path) round differently from G separate
forwards: measured max 4.1e-7 relative (3.2e-15 where no sum is reordered, `repeat`); GRAD_TOL =
1e-5 leaves a margin of 24. The mistakes the tests must catch (another video, completions that see
each other, a media mix-up) move log-probs by more than 1e-3 (test_tolerance_detects_mistakes)."""
from __future__ import annotations

import copy

import pytest
import torch

from mmgrpo.models import logprobs as logprobs_mod
from mmgrpo.models.layout import keep_lengths, prefix_mask
from mmgrpo.models.logprobs import batch_logprobs
from mmgrpo.processors.sample import PromptInputs
from tests.prompts import make_prompt
from tests.rope_reference import full_sequence_positions

LOGP_TOL = 1e-10
GRAD_TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def make_completions(processor, lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random non-special tokens; completion g has `lengths[g]` tokens, the last one EOS, then pad."""
    tok = processor.tokenizer
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (len(lengths), width), generator=gen)  # byte-level tokens, never special
    mask = torch.zeros_like(ids)
    for g, n in enumerate(lengths):
        ids[g, n - 1] = tok.convert_tokens_to_ids("<|im_end|>")
        ids[g, n:] = tok.pad_token_id
        mask[g, :n] = 1
    return ids, mask


def as_double(prompt: PromptInputs) -> PromptInputs:
    return PromptInputs(prompt.sample, prompt.input_ids, prompt.mm_token_type_ids, prompt.vision.to("cpu", torch.float64))


@pytest.fixture(scope="module")
def policy(tiny):
    """A float64 copy of the tiny model (vision tower included) whose weights are scaled up so that
    logits depend strongly on context: a wrong mask or position shows up far above the tolerance."""
    model = copy.deepcopy(tiny[0]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.train(False), tiny[1]


def pad_of(processor) -> int:
    return processor.tokenizer.pad_token_id


def lp(model, processor, prompts, ids, masks, mode="shared", temperature=1.0):
    return batch_logprobs(model, prompts, ids, masks, mode, temperature, pad_of(processor))


def direct_logprobs(model, prompt: PromptInputs, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0):
    """G separate forwards of [prompt | c_g[:n_g]], written out independently of the library, with
    the positions of the original Qwen rule (tests.rope_reference)."""
    rows = []
    for g in range(ids.shape[0]):
        n = int(mask[g].sum())
        seq = torch.cat([prompt.input_ids[0], ids[g, :n]]).view(1, -1)
        types = torch.cat([prompt.mm_token_type_ids[0], torch.zeros(n, dtype=prompt.mm_token_type_ids.dtype)])
        logits = model(input_ids=seq, mm_token_type_ids=types.view(1, -1), position_ids=full_sequence_positions(
            model, prompt, n), **prompt.vision.as_kwargs()).logits[0]
        logp = torch.log_softmax(logits[prompt.length - 1 : -1].double() / temperature, dim=-1)  # [n, V]
        row = torch.zeros(ids.shape[1], dtype=torch.float64)
        row[:n] = logp.gather(-1, ids[g, :n, None]).squeeze(-1)
        rows.append(row)
    return torch.stack(rows)


def grads_of(model, fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def max_grad_rel_err(ga: dict, gb: dict) -> float:
    assert ga.keys() == gb.keys()
    return max(rel_err(ga[k], gb[k]) for k in gb)


CASES = {"image": ["image"], "video": ["video"], "multi_image": ["image", "image"], "video_and_image": ["video", "image"]}
KINDS = [["video"], ["image"], ["image", "image"]]  # a mixed batch: prompt lengths 48 / 38 / 46
LENGTHS = [([7, 3, 11, 5], 12), ([2, 4, 1, 3], 5), ([9, 9, 2, 6], 10)]  # completion lengths, width per group


def mixed_batch(processor):
    prompts = [as_double(make_prompt(processor, kinds, seed=b)) for b, kinds in enumerate(KINDS)]
    comps = [make_completions(processor, lengths, width, seed=b) for b, (lengths, width) in enumerate(LENGTHS)]
    return prompts, [c[0] for c in comps], [c[1] for c in comps]


@pytest.mark.parametrize("mode", ["shared", "repeat"])
@pytest.mark.parametrize("case", CASES)
def test_one_group_equals_direct(policy, case, mode):
    model, processor = policy
    prompt = as_double(make_prompt(processor, CASES[case]))
    ids, mask = make_completions(processor, [7, 3, 11, 5], width=12)  # padding inside the shared row
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = lp(model, processor, [prompt], [ids], [mask], mode)[0]
    assert out.dtype == torch.float32 or out.dtype == torch.float64
    assert (out[mask == 0] == 0).all()
    assert rel_err(out, direct_logprobs(model, prompt, ids, mask)) <= LOGP_TOL
    g_ref = grads_of(model, lambda: (direct_logprobs(model, prompt, ids, mask) * weights).sum())
    g = grads_of(model, lambda: (lp(model, processor, [prompt], [ids], [mask], mode)[0] * weights * mask).sum())
    assert any(k.startswith("model.visual") for k in g), "no gradient reached the vision tower"
    assert max_grad_rel_err(g, g_ref) <= GRAD_TOL


@pytest.mark.parametrize("mode", ["shared", "repeat"])
def test_mixed_batch_equals_direct(policy, mode):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    assert len({p.length for p in prompts}) == 3 and len({i.shape[1] for i in ids}) == 3  # really mixed
    weights = [torch.randn(i.shape, generator=torch.Generator().manual_seed(10 + b), dtype=torch.float64)
               for b, i in enumerate(ids)]
    with torch.no_grad():
        out = lp(model, processor, prompts, ids, masks, mode)
    for b, (o, p, i, m) in enumerate(zip(out, prompts, ids, masks)):
        assert o.shape == i.shape and (o[m == 0] == 0).all()
        assert rel_err(o, direct_logprobs(model, p, i, m)) <= LOGP_TOL, b

    def loss(fn):
        return lambda: sum((x * w).sum() for x, w in zip(fn(), weights))

    g_ref = grads_of(model, loss(lambda: [direct_logprobs(model, p, i, m) for p, i, m in zip(prompts, ids, masks)]))
    g = grads_of(model, loss(lambda: lp(model, processor, prompts, ids, masks, mode)))
    assert max_grad_rel_err(g, g_ref) <= GRAD_TOL


def test_tolerance_detects_mistakes(policy):
    """Other video pixels, or completions that attend to each other (a plain causal row
    [prompt | c_1 | c_2]), move log-probs far beyond the tolerance."""
    model, processor = policy
    prompt = as_double(make_prompt(processor, ["video"]))
    ids, mask = make_completions(processor, [6, 6], width=6)
    with torch.no_grad():
        ref = direct_logprobs(model, prompt, ids, mask)
        other = copy.deepcopy(prompt)
        other.vision.pixel_values_videos = torch.zeros_like(prompt.vision.pixel_values_videos)
        assert rel_err(lp(model, processor, [other], [ids], [mask])[0], ref) > 1e-3
        seq = torch.cat([prompt.input_ids, ids.view(1, -1)], dim=1)  # [1, P + 12]
        types = torch.cat([prompt.mm_token_type_ids, torch.zeros_like(ids.view(1, -1))], dim=1)
        logits = model(input_ids=seq, mm_token_type_ids=types, position_ids=full_sequence_positions(model, prompt, 12),
                       **prompt.vision.as_kwargs()).logits[0]  # [P + 12, V]
    # c_2's tokens 1..5, predicted from rows that can see c_1
    leaky = torch.log_softmax(logits[prompt.length + 6 : -1], -1).gather(-1, ids[1, 1:, None]).squeeze(-1)
    assert rel_err(leaky, ref[1, 1:]) > 1e-3


def test_rows_see_their_own_media(policy):
    """Another image in group 1 moves group 1's log-probs far beyond the tolerance (a media mix-up
    between rows would be caught) and leaves the other groups' log-probs unchanged."""
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    with torch.no_grad():
        ref = lp(model, processor, prompts, ids, masks)
        swapped = [prompts[0], as_double(make_prompt(processor, ["image"], seed=5)), prompts[2]]
        out = lp(model, processor, swapped, ids, masks)
    assert rel_err(out[1], ref[1]) > 1e-3
    assert rel_err(out[0], ref[0]) <= LOGP_TOL and rel_err(out[2], ref[2]) <= LOGP_TOL


def test_temperature_and_masked_rows(policy):
    model, processor = policy
    prompt = as_double(make_prompt(processor, ["image"]))
    ids, mask = make_completions(processor, [4, 9, 2], width=9)
    with torch.no_grad():
        hot = lp(model, processor, [prompt], [ids], [mask], temperature=0.7)[0]
        assert rel_err(hot, direct_logprobs(model, prompt, ids, mask, temperature=0.7)) <= LOGP_TOL
        full = lp(model, processor, [prompt], [ids], [mask])[0]
        dropped_mask = mask.clone()
        dropped_mask[1] = 0  # e.g. an overlong completion filtered out of the loss
        dropped = lp(model, processor, [prompt], [ids], [dropped_mask])[0]
        empty = lp(model, processor, [prompt], [ids], [torch.zeros_like(mask)])[0]
    assert (dropped[1] == 0).all() and (empty == 0).all()
    assert rel_err(dropped[[0, 2]], full[[0, 2]]) <= LOGP_TOL


def test_mask_gap_keeps_context():
    """A token with mask 0 before the last unmasked one stays in the row as context."""
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert keep_lengths(mask).tolist() == [3, 0, 4]
    m = prefix_mask(2, torch.tensor([0, 0, 1]), torch.float32) == 0  # [5, 5] attend
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(m, expected)


class TowerCalls:
    """Counts the patches the vision tower receives, per call."""

    def __init__(self, model):
        self.patches: list[int] = []
        self.handle = model.model.visual.register_forward_hook(lambda m, args, out: self.patches.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def total_patches(prompts) -> int:
    return sum(x.shape[0] for p in prompts for x in (p.vision.pixel_values, p.vision.pixel_values_videos) if x is not None)


def test_vision_tower_runs_once_per_call(policy, monkeypatch):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    everything, G = total_patches(prompts), ids[0].shape[0]
    with torch.no_grad():
        with TowerCalls(model) as calls:
            lp(model, processor, prompts, ids, masks, "shared")
            lp(model, processor, prompts, ids, masks, "shared")
        assert calls.patches == [everything, everything]  # once per call, every prompt's media
        with TowerCalls(model) as calls:
            ref = lp(model, processor, prompts, ids, masks, "repeat")
        assert sum(calls.patches) == G * everything  # the baseline: media repeated per row
        # attention without 4-D masks (flash_attention_2): B*G rows, one vision-tower run
        monkeypatch.setattr(logprobs_mod, "supports_4d_mask", lambda m: False)
        with TowerCalls(model) as calls:
            fallback = lp(model, processor, prompts, ids, masks, "shared")
        assert calls.patches == [everything]
    assert all(rel_err(a, b) <= LOGP_TOL for a, b in zip(fallback, ref))


def test_fallback_gradients_match(policy, monkeypatch):
    model, processor = policy
    prompt = as_double(make_prompt(processor, ["video", "image"]))
    ids, mask = make_completions(processor, [5, 2], width=5)
    g_ref = grads_of(model, lambda: lp(model, processor, [prompt], [ids], [mask], "repeat")[0].sum())
    monkeypatch.setattr(logprobs_mod, "supports_4d_mask", lambda m: False)
    g_fb = grads_of(model, lambda: lp(model, processor, [prompt], [ids], [mask], "shared")[0].sum())
    assert max_grad_rel_err(g_fb, g_ref) <= GRAD_TOL


def test_bad_batches_are_refused(policy):
    model, processor = policy
    prompts, ids, masks = mixed_batch(processor)
    with pytest.raises(ValueError, match="mode"):
        lp(model, processor, prompts, ids, masks, "packed")
    with pytest.raises(ValueError, match="3 prompts"):
        lp(model, processor, prompts, ids[:2], masks[:2])
    with pytest.raises(ValueError, match="group 1"):
        lp(model, processor, prompts, ids, [masks[0], masks[1][:, :2], masks[2]])
    with pytest.raises(ValueError, match="same number of completions"):
        lp(model, processor, prompts, [ids[0][:2], ids[1], ids[2]], [masks[0][:2], masks[1], masks[2]], "repeat")
