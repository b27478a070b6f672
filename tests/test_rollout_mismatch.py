"""The pure parts of the vLLM backend, in the default suite (no vllm needed): truncated importance
sampling by hand, its effect on the losses, the group seeds, the prompt vLLM is given, the merged
LoRA weights a sync sends, and the config checks."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mmgrpo.config import ConfigError, LossConfig, TrainConfig, load_config
from mmgrpo.models.vllm_backend import collapsed_ids, engine_seeds
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer.importance import importance_weights, logp_delta, mismatch_metrics
from mmgrpo.trainer.losses import LossInputs, Normalizer, compute_loss
from tests.trainer_utils import random_lora

# one group, two completions of 3 and 2 tokens
OLD = torch.tensor([[[-1.0, -2.0, -0.5], [-0.3, -0.2, float("-inf")]]])  # [1, 2, 3] trainer
ENGINE = torch.tensor([[[-1.5, -1.0, -0.5], [-0.1, -0.4, 0.0]]])  # [1, 2, 3] engine
MASK = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])  # [1, 2, 3]


def test_delta_is_zero_off_the_mask():
    d = logp_delta(OLD, ENGINE, MASK)
    assert torch.allclose(d, torch.tensor([[[0.5, -1.0, 0.0], [-0.2, 0.2, 0.0]]]))


@pytest.mark.parametrize("mode,expected", [
    # token ratios exp(0.5)=1.6487, exp(-1)=0.3679, 1, exp(-0.2)=0.8187, exp(0.2)=1.2214; cap 1.5
    ("token_truncate", [[1.5, math.exp(-1.0), 1.0], [math.exp(-0.2), math.exp(0.2), 0.0]]),
    ("token_mask", [[0.0, math.exp(-1.0), 1.0], [math.exp(-0.2), math.exp(0.2), 0.0]]),
    # sequence ratios exp(0.5 - 1 + 0) = 0.6065 and exp(-0.2 + 0.2) = 1, both under the cap
    ("sequence_truncate", [[math.exp(-0.5)] * 3, [1.0, 1.0, 0.0]]),
    ("sequence_mask", [[math.exp(-0.5)] * 3, [1.0, 1.0, 0.0]]),
])
def test_importance_weights_by_hand(mode, expected):
    w = importance_weights(logp_delta(OLD, ENGINE, MASK), MASK, mode, cap=1.5)
    assert torch.allclose(w, torch.tensor([expected]), atol=1e-6)


def test_sequence_cap():
    """A sequence ratio exp(2) = 7.39 is cut to the cap (truncate) or dropped (mask)."""
    delta = torch.tensor([[[1.0, 1.0]]])  # [1, 1, 2]
    mask = torch.ones(1, 1, 2)
    assert torch.allclose(importance_weights(delta, mask, "sequence_truncate", 3.0), torch.full((1, 1, 2), 3.0))
    assert torch.equal(importance_weights(delta, mask, "sequence_mask", 3.0), torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="unknown importance sampling mode"):
        importance_weights(delta, mask, "none", 3.0)


def test_mismatch_metrics_by_hand():
    m = mismatch_metrics(logp_delta(OLD, ENGINE, MASK), MASK, "token_truncate", 1.5)
    assert m["rollout/logp_delta_mean"].item() == pytest.approx((0.5 + 1.0 + 0.0 + 0.2 + 0.2) / 5)
    assert m["rollout/logp_delta_max"].item() == pytest.approx(1.0)
    w = [1.5, math.exp(-1.0), 1.0, math.exp(-0.2), math.exp(0.2)]
    assert m["rollout/is_weight_mean"].item() == pytest.approx(sum(w) / 5, rel=1e-6)
    assert m["rollout/is_capped_frac"].item() == pytest.approx(1 / 5)  # exp(0.5) > 1.5 only
    assert set(mismatch_metrics(logp_delta(OLD, ENGINE, MASK), MASK, "none", 1.5)) == {
        "rollout/logp_delta_mean", "rollout/logp_delta_max"}


def loss_inputs(weight: torch.Tensor | None) -> LossInputs:
    logp = torch.tensor([[[-1.0, -2.0], [-0.5, -0.7]]], requires_grad=True)  # [1, 2, 2]
    return LossInputs(logp=logp, old_logp=logp.detach(), ref_logp=None, advantages=torch.tensor([[1.0, -1.0]]),
                      mask=torch.ones(1, 2, 2), zero_std=torch.tensor([False]), is_weight=weight)


def test_token_loss_is_weighted_per_token():
    """On-policy the clipped surrogate per token is -A (ratio 1); weighted: -(A_i w_it), token mean."""
    w = torch.tensor([[[2.0, 0.5], [1.0, 3.0]]])  # [1, 2, 2]
    cfg = LossConfig(objective="clipped_token", aggregation="token_mean")
    x = loss_inputs(w)
    out = compute_loss(x, cfg, Normalizer.local(x, 2))
    assert out.loss.item() == pytest.approx(-(1 * 2.0 + 1 * 0.5 - 1 * 1.0 - 1 * 3.0) / 4)
    plain = compute_loss(loss_inputs(None), cfg, Normalizer.local(x, 2))
    assert plain.loss.item() == pytest.approx(0.0)  # -(1 + 1 - 1 - 1) / 4


def test_reg_grpo_weights_each_completion():
    """Reg-GRPO on-policy: z = 0, squared error A_i^2 = 1 per completion, weight s_g / 2 (reg_scale
    std, s_g = sqrt(eps)); the sequence weights 2 and 0.5 give (2 + 0.5) / 2 instead of 1."""
    cfg = LossConfig(objective="reg_grpo", reg_eps=1e-6)
    w = torch.tensor([[[2.0, 2.0], [0.5, 0.5]]])  # [1, 2, 2], one value per completion
    x = loss_inputs(w)
    scale = math.sqrt(1e-6) / 2
    assert compute_loss(x, cfg, Normalizer.local(x, 2)).loss.item() == pytest.approx(scale * (2 + 0.5) / 2)
    assert compute_loss(loss_inputs(None), cfg, Normalizer.local(x, 2)).loss.item() == pytest.approx(scale)


def test_group_seeds_never_share_a_child_seed():
    """vLLM gives child k of seed s the seed s + k: the groups of a step (and DA / T-GRPO streams)
    must own disjoint ranges, though the trainer's seeds differ by multiples of 7919 only."""
    streams = list(range(64)) + [100_000 + i for i in range(8)] + [300_000 + i for i in range(8)]
    for n in (2, 8, 64):
        seeds = engine_seeds([ckpt.step_seed(3, 17, s) for s in streams], n)
        children = [s + k for s in seeds for k in range(n)]
        assert len(set(children)) == len(children)
    assert engine_seeds([5, 6], 8) == [40, 48]  # consecutive trainer seeds, 8 apart for vLLM


def test_collapsed_ids_keep_one_placeholder_per_item():
    ids = torch.tensor([[1, 9, 7, 7, 7, 8, 2, 9, 6, 6, 8, 3]])  # image run of 3, video run of 2
    types = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 0, 0]])
    assert collapsed_ids(ids, types) == [1, 9, 7, 8, 2, 9, 6, 8, 3]


def test_merged_weights_equal_peft_merge_and_leave_the_policy(tiny):
    from mmgrpo.models.lora import merged_weights

    peft = random_lora(tiny[0], std=0.1)
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    got = dict(merged_weights(peft))
    assert all(torch.equal(before[k], v) for k, v in peft.state_dict().items())
    want = copy.deepcopy(peft).merge_and_unload().state_dict()
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-6
    assert any(not torch.equal(got[k], tiny[0].state_dict()[k]) for k in want)  # the adapter is in
    full = dict(merged_weights(tiny[0]))
    assert all(torch.equal(full[k], v) for k, v in tiny[0].state_dict().items())


def vllm_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, ["generation.backend=vllm", *overrides])


def test_config_checks():
    assert vllm_config().generation.vllm.is_mode == "sequence_truncate"
    with pytest.raises(ConfigError, match="Reg-GRPO regresses whole sequences"):
        vllm_config("generation.vllm.is_mode=token_truncate")
    vllm_config("generation.vllm.is_mode=token_truncate", "loss.preset=grpo")  # a token-level objective
    with pytest.raises(ConfigError, match="multiples of it"):
        vllm_config("generation.vllm.sync_every=3", "save_every=10", "max_steps=30")
    vllm_config("generation.vllm.sync_every=2", "save_every=10", "max_steps=30")
    with pytest.raises(ConfigError, match="generation.vllm.is_cap"):
        vllm_config("generation.vllm.is_cap=0.5")
    with pytest.raises(ConfigError, match="generation.backend"):
        load_config(TrainConfig, None, ["generation.backend=sglang"])
