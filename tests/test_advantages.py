"""Group advantages and multi-reward combination, hand-computed."""
from __future__ import annotations

import math

import pytest
import torch

from mmgrpo.trainer.advantages import MAX_ABS_REWARD, combine_rewards, compute_advantages, group_advantages

NAN = float("nan")
EPS = 1e-4


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The advantage math is float64 whatever the input dtype (see advantages.py)."""
    assert actual.dtype == torch.float64, actual.dtype
    torch.testing.assert_close(actual, expected.double())


def test_group_scale_hand_computed():
    total = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv, zero_std = group_advantages(total, "group", EPS)
    # group 0: mean 0.5, population std 0.5 -> (R - 0.5) / 0.5001 ; group 1: all equal -> 0
    a = 0.5 / (0.5 + EPS)
    _close(adv, torch.tensor([[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]]))
    assert zero_std.tolist() == [False, True]
    assert not adv.requires_grad


def test_batch_scale_hand_computed():
    total = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    adv, zero_std = group_advantages(total, "batch", EPS)
    # centred per group: [0.5, -0.5], [0, 0]; batch std of [1, 0, 1, 1]: mean 0.75,
    # var = (3 * 0.0625 + 0.5625) / 4 = 0.1875 -> std 0.4330127
    s = math.sqrt(0.1875) + EPS
    _close(adv, torch.tensor([[0.5 / s, -0.5 / s], [0.0, 0.0]]))
    assert zero_std.tolist() == [False, True]


@pytest.mark.parametrize("scale, std_normalize", [("none", True), ("group", False)])
def test_dr_grpo_no_std(scale, std_normalize):
    total = torch.tensor([[3.0, 1.0, 2.0]])
    adv, _ = group_advantages(total, scale, EPS, std_normalize=std_normalize)
    _close(adv, torch.tensor([[1.0, -1.0, 0.0]]))  # R - mean(= 2)


def test_no_center():
    adv, _ = group_advantages(torch.tensor([[3.0, 1.0]]), "none", EPS, center=False)
    _close(adv, torch.tensor([[3.0, 1.0]]))


def test_none_left_out_of_the_samples_baseline():
    # accuracy [1, 0, 1], format [1, None, 0], weights [1, 0.5]
    rewards = torch.tensor([[[1.0, 1.0], [0.0, NAN], [1.0, 0.0]]])
    total, scorable = combine_rewards(rewards, [1.0, 0.5], "sum_then_normalize")
    # format's group mean over applicable entries = 0.5, filled in for completion 1:
    # totals = [1 + 0.5, 0 + 0.5 * 0.5, 1 + 0] = [1.5, 0.25, 1.0]
    _close(total, torch.tensor([[1.5, 0.25, 1.0]]))
    assert scorable.all()
    adv, _ = group_advantages(total, "none", EPS, scorable=scorable)
    # completion 1's advantage is its accuracy term only: 1 * (0 - 2/3); format says nothing about it
    # completion 0: (1 - 2/3) + 0.5 * (1 - 0.5) = 0.58333 ; completion 2: (1 - 2/3) + 0.5 * (0 - 0.5) = 0.08333
    _close(adv, torch.tensor([[1 / 3 + 0.25, -2 / 3, 1 / 3 - 0.25]]))


def test_unscorable_completion_gets_zero_and_stays_out_of_the_baseline():
    rewards = torch.tensor([[[1.0], [0.0], [NAN]]])
    res = compute_advantages(rewards, [1.0], "sum_then_normalize", "group", EPS)
    a = 0.5 / (0.5 + EPS)  # mean and std over the two scorable completions: 0.5, 0.5
    _close(res.advantages, torch.tensor([[a, -a, 0.0]]))
    assert res.scorable.tolist() == [[True, True, False]]
    all_none = compute_advantages(torch.full((1, 3, 2), NAN), [1.0, 1.0], "sum_then_normalize", "group", EPS)
    assert all_none.advantages.abs().max().item() == 0.0 and all_none.zero_std.tolist() == [True]


def test_gdpo_normalize_then_sum_hand_computed():
    # one group of 4; r1 = [1, 0, 0, 0], r2 = [1, 1, 0, 0]; weights [1, 1]
    rewards = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    res = compute_advantages(rewards, [1.0, 1.0], "normalize_then_sum", "group", EPS)
    # r1: mean 0.25, std sqrt(0.1875) = 0.4330 -> z1 = [0.75, -0.25, -0.25, -0.25] / (0.4330 + eps)
    # r2: mean 0.5, std 0.5 -> z2 = [0.5, 0.5, -0.5, -0.5] / (0.5 + eps)
    s1, s2 = math.sqrt(0.1875) + EPS, 0.5 + EPS
    z = torch.tensor([0.75 / s1 + 0.5 / s2, -0.25 / s1 + 0.5 / s2, -0.25 / s1 - 0.5 / s2, -0.25 / s1 - 0.5 / s2],
                     dtype=torch.float64)
    # then over the batch: mean 0 (each z is centred), population std
    expected = (z - z.mean()) / (z.std(unbiased=False) + EPS)
    _close(res.advantages[0], expected)
    # sum_then_normalize sees totals [2, 1, 0, 0] and gives different relative weights
    plain = compute_advantages(rewards, [1.0, 1.0], "sum_then_normalize", "group", EPS).advantages[0]
    assert not torch.allclose(plain, res.advantages[0], atol=1e-3)


def test_gdpo_with_none_and_a_flat_group():
    rewards = torch.tensor([[[1.0, NAN], [0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    res = compute_advantages(rewards, [1.0, 1.0], "normalize_then_sum", "group", EPS)
    assert torch.isfinite(res.advantages).all()
    assert res.zero_std.tolist() == [False, True]
    assert res.advantages[1].abs().max().item() == 0.0


def test_inf_reward_names_the_group():
    rewards = torch.zeros(3, 2, 1)
    rewards[2, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="group 2 .completion 1."):
        combine_rewards(rewards, [1.0], "sum_then_normalize")


def test_nan_total_not_from_none_names_the_group():
    total = torch.tensor([[1.0, 0.0], [NAN, 1.0]])
    with pytest.raises(ValueError, match="group 1"):
        group_advantages(total, "group", EPS)
    with pytest.raises(ValueError, match="group 0"):
        group_advantages(torch.tensor([[float("-inf"), 0.0]]), "group", EPS, scorable=torch.tensor([[True, True]]))


def test_bad_weights_and_modes():
    with pytest.raises(ValueError, match="weights"):
        combine_rewards(torch.zeros(1, 2, 2), [1.0], "sum_then_normalize")
    with pytest.raises(ValueError, match="weights"):
        combine_rewards(torch.zeros(1, 2, 1), [NAN], "sum_then_normalize")
    with pytest.raises(ValueError, match="combination"):
        combine_rewards(torch.zeros(1, 2, 1), [1.0], "mean")
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.tensor([[1.0, 0.0]]), "global", EPS)


@pytest.mark.parametrize("combine, scale", [("sum_then_normalize", "group"), ("sum_then_normalize", "batch"),
                                            ("normalize_then_sum", "group")])
def test_huge_finite_rewards_are_scale_invariant(combine, scale):
    # 1e38 fits float32 (max 3.4e38) but its square does not: a float32 std is inf and every
    # advantage silently becomes 0. Without eps, (R - mean) / std is invariant under R -> cR;
    # eps is made negligible on both sides (GDPO's batch step would not scale it) to compare exactly.
    small = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, NAN], [1.0, 1.0]],
                          [[0.0, 1.0], [0.5, 0.0], [1.0, 1.0], [0.0, 0.0]]])  # [B=2, G=4, R=2]
    big = (small * 1e38).float()  # [2, 4, 2] what a float32 reward tensor would hold
    got = compute_advantages(big, [1.0, 0.5], combine, scale, 1e-60)
    want = compute_advantages(small.double(), [1.0, 0.5], combine, scale, 1e-60)
    _close(got.advantages, want.advantages)
    assert got.advantages.abs().max().item() > 0.5 and got.zero_std.tolist() == want.zero_std.tolist()


def test_unrepresentable_reward_is_refused_naming_the_group():
    # the variance squares deviations: past MAX_ABS_REWARD (1e100) float64 could overflow
    rewards = torch.zeros(2, 3, 1, dtype=torch.float64)
    rewards[1, 2, 0] = 1e101
    with pytest.raises(ValueError, match=r"reward .* group 1 \(completion 2\).*1e\+101.*1e\+100"):
        compute_advantages(rewards, [1.0], "sum_then_normalize", "group", EPS)
    rewards[1, 2, 0] = MAX_ABS_REWARD  # the bound itself is fine...
    assert compute_advantages(rewards, [1.0], "sum_then_normalize", "group", EPS).advantages[1, 2] > 1.0
    # ...but huge weights can still push the combined reward past what its variance can hold
    with pytest.raises(ValueError, match=r"combined reward .* group 1 \(completion 2\)"):
        compute_advantages(rewards, [1e60], "sum_then_normalize", "group", EPS)


def test_objective_parts_hand_computed_sum_then_normalize():
    # accuracy [1, 0], format [1, 1], weights [1, 0.5]: totals [1.5, 0.5], mean 1, std 0.5
    # accuracy's part: 1 * (r - 0.5) / (0.5 + eps) = [+-0.5 / 0.5001]; format's: 0.5 * (1 - 1) = 0
    rewards = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    a = compute_advantages(rewards, [1.0, 0.5], "sum_then_normalize", "group", EPS)
    v = 0.5 / (0.5 + EPS)
    _close(a.parts, torch.tensor([[[v, 0.0], [-v, 0.0]]]))
    _close(a.parts.sum(-1), a.advantages)


def test_objective_parts_hand_computed_normalize_then_sum():
    # G = 2. accuracy [1, 0] -> group-normalised [+-0.5 / 0.5001] = +-u; format [0, 1] -> -+u;
    # weights [1, 0.5]: parts [[u, -u/2], [-u, u/2]], summed [u/2, -u/2], batch std u/2
    # -> parts / (u/2 + eps)
    rewards = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    a = compute_advantages(rewards, [1.0, 0.5], "normalize_then_sum", "group", EPS)
    u = 0.5 / (0.5 + EPS)
    d = u / 2 + EPS
    _close(a.parts, torch.tensor([[[u / d, -u / 2 / d], [-u / d, u / 2 / d]]]))
    _close(a.parts.sum(-1), a.advantages)


@pytest.mark.parametrize("combine", ["sum_then_normalize", "normalize_then_sum"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_objective_parts_sum_to_the_advantage(combine, scale):
    """With None entries, an unscorable completion and a flat group: the parts add up to the
    advantage, and are 0 wherever it is."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(3, 4, 3, generator=gen, dtype=torch.float64)
    rewards[0, 1, 2] = NAN  # not applicable
    rewards[1, 2, :] = NAN  # unscorable
    rewards[2] = 1.0  # flat group
    a = compute_advantages(rewards, [1.0, 0.5, 2.0], combine, scale, EPS)
    torch.testing.assert_close(a.parts.sum(-1), a.advantages, atol=1e-12, rtol=0)
    assert (a.parts[2] == 0).all() and (a.parts[1, 2] == 0).all() and a.parts[0, 1, 2] == 0
    assert (a.parts[0] != 0).any()
