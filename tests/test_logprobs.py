"""group_logprobs: the shared-prefix row, the repeated rows and G direct forwards of the full
sequence agree (log-probs and parameter gradients), and the vision tower runs in every call."""
from __future__ import annotations

import copy

import pytest
import torch

from mmgrpo.processors.sample import PromptInputs
from tests.prompts import make_prompt
from mmgrpo.trainer import logprobs as logprobs_mod
from mmgrpo.trainer.logprobs import group_logprobs
from mmgrpo.trainer.prefix import keep_lengths, prefix_mask

REL_TOL = 1e-5


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


@pytest.fixture(scope="module")
def policy(tiny):
    """A trainable copy of the tiny model (vision tower included) whose weights are scaled up so
    that logits depend strongly on context: a wrong mask or position shows up far above 1e-5."""
    model = copy.deepcopy(tiny[0]).float()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.train(False), tiny[1]


def direct_logprobs(model, prompt: PromptInputs, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0):
    """G separate forwards of [prompt | c_g[:n_g]], written out independently of the library."""
    rows = []
    for g in range(ids.shape[0]):
        n = int(mask[g].sum())
        seq = torch.cat([prompt.input_ids[0], ids[g, :n]]).view(1, -1)
        text_types = torch.zeros(n, dtype=prompt.mm_token_type_ids.dtype)
        types = torch.cat([prompt.mm_token_type_ids[0], text_types]).view(1, -1)
        logits = model(input_ids=seq, mm_token_type_ids=types, **prompt.vision.as_kwargs()).logits[0]  # [P+n, V]
        logp = torch.log_softmax(logits[prompt.length - 1 : -1].float() / temperature, dim=-1)  # [n, V]
        row = torch.zeros(ids.shape[1])
        row[:n] = logp.gather(-1, ids[g, :n, None]).squeeze(-1)
        rows.append(row)
    return torch.stack(rows)


def grads_of(model, fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-12))


def max_grad_rel_err(ga: dict, gb: dict) -> float:
    assert ga.keys() == gb.keys()
    return max(rel_err(ga[k], gb[k]) for k in gb)


CASES = {
    "image": ["image"],
    "video": ["video"],
    "multi_image": ["image", "image"],
    "video_and_image": ["video", "image"],
}


@pytest.mark.parametrize("case", CASES)
def test_shared_equals_repeat_and_direct(policy, case):
    model, processor = policy
    prompt = make_prompt(processor, CASES[case])
    ids, mask = make_completions(processor, [7, 3, 11, 5], width=12)  # padding inside the shared row
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))

    lp = {m: group_logprobs(model, prompt, ids, mask, mode=m) for m in ("shared", "repeat")}
    ref = direct_logprobs(model, prompt, ids, mask)
    assert (lp["shared"][mask == 0] == 0).all()
    assert rel_err(lp["shared"], ref) <= REL_TOL
    assert rel_err(lp["repeat"], ref) <= REL_TOL

    g_ref = grads_of(model, lambda: (direct_logprobs(model, prompt, ids, mask) * weights).sum())
    for m in ("shared", "repeat"):
        g = grads_of(model, lambda: (group_logprobs(model, prompt, ids, mask, mode=m) * weights * mask).sum())
        assert any(k.startswith("model.visual") for k in g), "no gradient reached the vision tower"
        assert max_grad_rel_err(g, g_ref) <= REL_TOL, m


def test_tolerance_detects_mistakes(policy):
    """The comparisons here are sensitive: other video pixels, or completions that attend to each
    other (a plain causal row [prompt | c_1 | c_2]), move log-probs far beyond the tolerance."""
    model, processor = policy
    prompt = make_prompt(processor, ["video"])
    ids, mask = make_completions(processor, [6, 6], width=6)
    with torch.no_grad():
        ref = direct_logprobs(model, prompt, ids, mask)
        other_video = copy.deepcopy(prompt)
        other_video.vision.pixel_values_videos = torch.zeros_like(prompt.vision.pixel_values_videos)
        assert rel_err(group_logprobs(model, other_video, ids, mask), ref) > 1e-3
        seq = torch.cat([prompt.input_ids, ids.view(1, -1)], dim=1)  # [1, P + 12]
        types = torch.cat([prompt.mm_token_type_ids, torch.zeros_like(ids.view(1, -1))], dim=1)
        logits = model(input_ids=seq, mm_token_type_ids=types, **prompt.vision.as_kwargs()).logits[0]  # [P + 12, V]
    # c_2's tokens 1..5, predicted from rows that can see c_1
    leaky = torch.log_softmax(logits[prompt.length + 6 : -1], -1).gather(-1, ids[1, 1:, None]).squeeze(-1)
    assert rel_err(leaky, ref[1, 1:]) > 1e-3


def test_temperature_and_masked_rows(policy):
    model, processor = policy
    prompt = make_prompt(processor, ["image"])
    ids, mask = make_completions(processor, [4, 9, 2], width=9)
    with torch.no_grad():
        hot = group_logprobs(model, prompt, ids, mask, temperature=0.7)
        assert rel_err(hot, direct_logprobs(model, prompt, ids, mask, temperature=0.7)) <= REL_TOL
        full = group_logprobs(model, prompt, ids, mask)
        dropped_mask = mask.clone()
        dropped_mask[1] = 0  # e.g. an overlong completion filtered out of the loss
        dropped = group_logprobs(model, prompt, ids, dropped_mask)
    assert (dropped[1] == 0).all()
    assert rel_err(dropped[[0, 2]], full[[0, 2]]) <= REL_TOL


def test_mask_gap_keeps_context():
    """A token with mask 0 before the last unmasked one stays in the row as context."""
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert keep_lengths(mask).tolist() == [3, 0, 4]
    m = prefix_mask(2, torch.tensor([0, 0, 1]), torch.float32)[0, 0] == 0  # [5, 5] attend
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(m, expected)


class TowerCalls:
    def __init__(self, model):
        self.patches: list[int] = []
        tower = model.model.visual
        self.handle = tower.register_forward_hook(lambda mod, args, out: self.patches.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_vision_tower_runs_in_every_call(policy, monkeypatch):
    model, processor = policy
    prompt = make_prompt(processor, ["video"])
    n_patches = prompt.vision.pixel_values_videos.shape[0]
    ids, mask = make_completions(processor, [5, 3, 4], width=5)
    with torch.no_grad():
        with TowerCalls(model) as calls:
            group_logprobs(model, prompt, ids, mask, mode="shared")
            group_logprobs(model, prompt, ids, mask, mode="shared")
        assert calls.patches == [n_patches, n_patches]  # exactly once per call, on the prompt's video
        with TowerCalls(model) as calls:
            ref = group_logprobs(model, prompt, ids, mask, mode="repeat")
        assert calls.patches == [3 * n_patches]  # the video repeated per row
        # attention without 4-D masks (flash_attention_2): G rows, one vision-tower run
        monkeypatch.setattr(logprobs_mod, "supports_4d_mask", lambda m: False)
        with TowerCalls(model) as calls:
            fallback = group_logprobs(model, prompt, ids, mask, mode="shared")
        assert calls.patches == [n_patches]
    assert rel_err(fallback, ref) <= REL_TOL


def test_fallback_gradients_match(policy, monkeypatch):
    model, processor = policy
    prompt = make_prompt(processor, ["video", "image"])
    ids, mask = make_completions(processor, [5, 2], width=5)
    g_ref = grads_of(model, lambda: group_logprobs(model, prompt, ids, mask, mode="repeat").sum())
    monkeypatch.setattr(logprobs_mod, "supports_4d_mask", lambda m: False)
    g_fb = grads_of(model, lambda: group_logprobs(model, prompt, ids, mask, mode="shared").sum())
    assert max_grad_rel_err(g_fb, g_ref) <= REL_TOL
