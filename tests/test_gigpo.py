"""GiGPO (arXiv 2505.10978) by hand: discounted returns, anchor step groups, step and episode
advantages, and their token expansion, on numbers worked out in the comments."""
from __future__ import annotations

import math

import torch

from mmgrpo.trainer.gigpo import (anchor_groups, discounted_returns, final_reward_steps, gigpo_advantages,
                                  step_advantages, token_advantages)

# Three trajectories of one prompt. Rewards R = [1, 0, 1]; turns 2, 2, 1. Every first turn sees
# the prompt ("p"); trajectories 0 and 1 made the same call and got the same answer ("a").
R = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
TURNS = torch.tensor([2, 2, 1])
STATES = [["p", "a"], ["p", "a"], ["p"]]


def test_discounted_returns_of_a_final_reward():
    steps, mask = final_reward_steps(R, TURNS, 2)
    assert steps.tolist() == [[0, 1], [0, 0], [1, 0]] and mask.tolist() == [[1, 1], [1, 1], [1, 0]]
    # gamma = 0.5: R_0 = 0 + 0.5 * 1 for trajectory 0
    assert discounted_returns(steps, mask, 0.5).tolist() == [[0.5, 1.0], [0.0, 0.0], [1.0, 0.0]]
    dense = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    assert discounted_returns(dense, torch.ones(1, 3, dtype=torch.float64), 0.5).tolist() == [[1 + 1 + 1, 2 + 2, 4]]


def test_anchor_groups_are_identical_states():
    assert anchor_groups(STATES).tolist() == [[0, 1], [0, 1], [0, -1]]
    assert anchor_groups([[(1, 2)], [(1, 3)], [(1, 2)]]).tolist() == [[0], [1], [0]]


def test_gigpo_by_hand_with_std_scaling():
    steps, mask = final_reward_steps(R, TURNS, 2)
    adv = gigpo_advantages(R, steps, mask, anchor_groups(STATES), gamma=0.5, omega=1.0, scale="std", eps=0.0)
    # episode: mean 2/3, unbiased std sqrt(1/3): A_E = [1/3, -2/3, 1/3] / sqrt(1/3)
    s = math.sqrt(1 / 3)
    a_e = [(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s]
    # step group turn 0, returns [0.5, 0, 1]: mean 0.5, std 0.5 -> [0, -1, 1]
    # step group turn 1 (trajectories 0, 1), returns [1, 0]: mean 0.5, std sqrt(0.5) -> [+-0.5 / sqrt(0.5)]
    h = 0.5 / math.sqrt(0.5)
    expected = [[a_e[0] + 0, a_e[0] + h], [a_e[1] - 1, a_e[1] - h], [a_e[2] + 1, 0.0]]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_gigpo_without_scaling_and_omega():
    steps, mask = final_reward_steps(R, TURNS, 2)
    adv = gigpo_advantages(R, steps, mask, anchor_groups(STATES), gamma=0.5, omega=2.0, scale="none", eps=1e-6)
    # A_E = [1/3, -2/3, 1/3]; A_S turn 0 = [0, -0.5, 0.5]; turn 1 = [0.5, -0.5]
    expected = [[1 / 3, 1 / 3 + 1.0], [-2 / 3 - 1.0, -2 / 3 - 1.0], [1 / 3 + 1.0, 0.0]]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_a_state_seen_once_has_no_step_advantage():
    returns = torch.tensor([[0.9, 1.0], [0.0, 0.3]], dtype=torch.float64)
    groups = anchor_groups([["p", "x"], ["p", "y"]])  # second turns differ: singletons
    step = step_advantages(returns, groups, "std", 1e-6)
    assert step[:, 1].tolist() == [0.0, 0.0] and step[0, 0] > 0 > step[1, 0]


def test_equal_rewards_the_shorter_trajectory_gets_the_credit_and_gamma_one_is_the_episode():
    ones = torch.ones(3, dtype=torch.float64)
    same, m = final_reward_steps(ones, torch.tensor([2, 2, 2]), 2)
    assert gigpo_advantages(ones, same, m, anchor_groups([["p", "a"]] * 3), 0.95, 1.0, "std", 1e-6).abs().max() < 1e-9
    # equal rewards, turns 2, 2, 1: turn-0 returns [0.95, 0.95, 1] (the discount, GiGPO eq. 6) ->
    # deviations [-1/60, -1/60, 1/30], std 1/(20 sqrt 3): [-1/sqrt 3, -1/sqrt 3, 2/sqrt 3]; A_E = 0
    steps, mask = final_reward_steps(ones, TURNS, 2)
    adv = gigpo_advantages(ones, steps, mask, anchor_groups(STATES), 0.95, 1.0, "std", 1e-12)
    r3 = math.sqrt(3)
    torch.testing.assert_close(adv, torch.tensor([[-1 / r3, 0], [-1 / r3, 0], [2 / r3, 0]], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    # gamma = 1 and one turn each: the step group is the whole group, A = (1 + omega) * A_E
    one, m1 = final_reward_steps(R, torch.ones(3, dtype=torch.long), 1)
    adv = gigpo_advantages(R, one, m1, anchor_groups([["p"], ["p"], ["p"]]), 1.0, 1.0, "std", 0.0)
    episode = (R - R.mean()) / R.std()
    torch.testing.assert_close(adv[:, 0], 2 * episode, atol=1e-12, rtol=0)


def test_token_advantages_follow_the_turns():
    step = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    turn_of_token = torch.tensor([[0, 0, -1, -1, 1, 1], [0, 0, 0, -1, -1, -1]])  # -1: tool / padding tokens
    assert token_advantages(step, turn_of_token).tolist() == [[1, 1, 0, 0, -2, -2], [0.5, 0.5, 0.5, 0, 0, 0]]
