"""The KL coefficient acts under every objective (Reg-GRPO included) with one update per rollout.

Reg-GRPO's z-score makes its loss blind to the scale of the log-ratios, so on-policy (every ratio 0)
its gradient is 1/sqrt(reg_eps) times the policy gradient and a KL term next to it does nothing
(trainer.losses.reg_grpo_loss). With the detached-std weight (loss.reg_scale=std, the default)
and the sequence-level KL of the reg_grpo preset, beta restrains the drift from the reference as
much as GRPO's beta does. Measured here (16 steps, full fine-tuning, lr 1e-3, beta 1; k3 KL to the
start weights on 4 fresh completions of each of the 8 prompts):
    Reg-GRPO   beta 0: 7.30e-2   beta 1: 5.82e-2  (-20%)   reg_scale=none, beta 1: 7.30e-2 (0%)
    GRPO       beta 0: 7.61e-2   beta 1: 5.95e-2  (-22%)
"""
from __future__ import annotations

import pytest
import torch

from mmgrpo.models.loading import load_model
from mmgrpo.trainer.loop import train
from mmgrpo.trainer.phases import encode, rollout_prompts
from mmgrpo.trainer.setup import setup
from mmgrpo.trainer.update import logprobs_of
from tests.trainer_utils import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 16


def kl_to_start(run, start: torch.nn.Module) -> float:
    """Mean per-token k3 KL(pi || pi_start) over G completions of every training prompt sampled from
    the trained policy (a Monte-Carlo estimate under pi, as the loss's KL term)."""
    prompts = [encode(run, s) for s in run.samples]
    groups = rollout_prompts(run, prompts, list(range(len(prompts))), "none", [0.0] * len(prompts))
    s = run.update_settings
    with torch.no_grad():
        run.policy.eval()
        policy, ref = logprobs_of(run.policy, list(groups), s), logprobs_of(start, list(groups), s)
    total = tokens = 0.0
    for lp, lr, g in zip(policy, ref, groups):
        m = g.completion_mask.bool()  # [G, C]
        d = (lr - lp)[m]  # [n]
        total += float((torch.exp(d) - d - 1).sum())
        tokens += float(m.sum())
    return total / tokens


def trained_kl(tiny_dir, task, rewards, out, *overrides) -> float:
    cfg = tiny_train_config(tiny_dir, task, out, rewards, "lora.enabled=false", f"max_steps={STEPS}", *overrides)
    run = setup(cfg)
    train(cfg, run)
    return kl_to_start(run, load_model(tiny_dir, "fp32", "cpu").eval())


@pytest.mark.parametrize("preset", ["reg_grpo", "grpo"])
def test_beta_keeps_the_policy_closer_to_the_reference(tiny_dir, task, rewards, tmp_path, preset):
    free = trained_kl(tiny_dir, task, rewards, tmp_path / "free", f"loss.preset={preset}", "loss.beta=0.0")
    tied = trained_kl(tiny_dir, task, rewards, tmp_path / "tied", f"loss.preset={preset}", "loss.beta=1.0")
    assert free > 1e-2  # the policy did move
    assert tied < 0.9 * free, (preset, free, tied)  # measured: 0.80x (Reg-GRPO), 0.78x (GRPO)


@pytest.mark.slow  # documents the failure the default fixes; the numbers are in the module docstring
def test_paper_scale_reg_grpo_makes_beta_inert(tiny_dir, task, rewards, tmp_path):
    """The failure the default fixes: the loss as written (reg_scale=none) at the same beta 1."""
    free = trained_kl(tiny_dir, task, rewards, tmp_path / "free", "loss.preset=reg_grpo", "loss.beta=0.0",
                      "loss.reg_scale=none")
    tied = trained_kl(tiny_dir, task, rewards, tmp_path / "tied", "loss.preset=reg_grpo", "loss.beta=1.0",
                      "loss.reg_scale=none")
    assert tied == pytest.approx(free, rel=1e-2), (free, tied)  # measured: 7.302e-2 vs 7.303e-2
