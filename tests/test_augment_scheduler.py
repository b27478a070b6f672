"""DifficultyScheduler: ΔR, dead zone, zero-variance filter, strength, window, best traces, state."""
from __future__ import annotations

import json

import pytest

from mmgrpo.augment import Decision, DifficultyScheduler
from mmgrpo.config import AugmentConfig


def sched(**kw) -> DifficultyScheduler:
    return DifficultyScheduler(AugmentConfig(**kw))


def test_empty_window_gives_no_delta_and_no_augmentation():
    s = sched()
    assert s.delta(0.5) is None
    assert s.decide("x", [0.0, 0.0]) == Decision("none", 0.0, 0.0)


def test_delta_is_window_mean_minus_group_mean():
    s = sched(dead_zone=0.1)
    s.observe([0.25, 0.75, 0.5])  # window mean = 1.5 / 3 = 0.5
    assert s.delta(0.125) == pytest.approx(0.375)  # 0.5 - 0.125: harder than usual
    assert s.delta(0.875) == pytest.approx(-0.375)  # 0.5 - 0.875: easier than usual


def test_dead_zone_and_direction():
    s = sched(dead_zone=0.1, only_zero_variance=False, adaptive=True, strength_scale=1.0)
    s.observe([0.5, 0.5])  # window mean 0.5
    # group mean 0.45 -> ΔR = 0.05, |0.05| < 0.1: dead zone
    assert s.decide("a", [0.4, 0.5]).kind == "none"
    # group mean 0.55 -> ΔR = -0.05: dead zone
    assert s.decide("b", [0.5, 0.6]).kind == "none"
    # group mean 0.25 -> ΔR = +0.25 > 0.1: hard sample -> easier input (hint)
    d = s.decide("c", [0.0, 0.5])
    assert (d.kind, d.delta, d.strength) == ("easier", pytest.approx(0.25), pytest.approx(0.25))
    # group mean 1.0 -> ΔR = -0.5 < -0.1: easy sample -> harder input (perturbation)
    d = s.decide("d", [1.0, 1.0])
    assert (d.kind, d.delta, d.strength) == ("harder", pytest.approx(-0.5), pytest.approx(0.5))


def test_only_zero_variance_skips_groups_with_spread():
    s = sched(dead_zone=0.1, only_zero_variance=True)
    s.observe([0.5])  # window mean 0.5
    # rewards [0, 0.5]: mean 0.25, ΔR = 0.25 would be "easier", but the rewards differ
    d = s.decide("x", [0.0, 0.5])
    assert d.kind == "none" and d.delta == pytest.approx(0.25) and d.strength == 0.0
    # rewards all 0: mean 0, ΔR = 0.5 -> easier
    assert s.decide("y", [0.0, 0.0, 0.0]).kind == "easier"
    # rewards all 1: mean 1, ΔR = -0.5 -> harder
    assert s.decide("z", [1.0, 1.0]).kind == "harder"
    # the same spread group with the filter off is augmented
    s2 = sched(dead_zone=0.1, only_zero_variance=False)
    s2.observe([0.5])
    assert s2.decide("x", [0.0, 0.5]).kind == "easier"


def test_strength_adaptive_capped_and_fixed():
    s = sched(dead_zone=0.1, adaptive=True, strength_scale=2.0, max_strength=0.75)
    s.observe([0.5])  # window mean 0.5
    # ΔR = 0.5 - 0.25 = 0.25 -> 2 * 0.25 = 0.5 < cap 0.75
    assert s.decide("a", [0.25, 0.25]).strength == pytest.approx(0.5)
    # ΔR = 0.5 - 0 = 0.5 -> 2 * 0.5 = 1.0, capped at 0.75
    assert s.decide("b", [0.0, 0.0]).strength == pytest.approx(0.75)
    # ΔR = 0.5 - 1 = -0.5 -> 2 * |-0.5| = 1.0, capped at 0.75
    assert s.decide("c", [1.0, 1.0]).strength == pytest.approx(0.75)
    f = sched(dead_zone=0.1, adaptive=False, fixed_strength=0.3)
    f.observe([0.5])
    # fixed: the same 0.3 whatever |ΔR| (0.25 or 0.5)
    assert f.decide("a", [0.25, 0.25]).strength == pytest.approx(0.3)
    assert f.decide("b", [0.0, 0.0]).strength == pytest.approx(0.3)


def test_window_keeps_only_last_w_means():
    s = sched(window=3)
    s.observe([1.0, 1.0, 1.0])
    s.observe([0.0, 0.0])  # window = [1, 0, 0]: mean 1/3
    assert s.window_mean() == pytest.approx(1 / 3)
    s.observe([0.0])  # window = [0, 0, 0]: the 1.0s are gone
    assert s.window_mean() == 0.0
    assert s.delta(0.0) == 0.0


def test_decisions_within_a_step_use_the_window_before_it():
    s = sched(dead_zone=0.1, only_zero_variance=True)
    s.observe([0.5])
    first = s.decide("a", [0.0, 0.0])
    second = s.decide("b", [0.0, 0.0])
    assert first == second  # deciding "a" did not move the baseline for "b"
    s.observe([0.0, 0.0])  # window [0.5, 0, 0]: mean 1/6
    # ΔR for an all-0 group: 1/6 - 0 = 0.1667 > 0.1, still easier but weaker
    assert s.decide("a", [0.0, 0.0]).delta == pytest.approx(1 / 6)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="window"):
        sched(window=0)
    s = sched()
    with pytest.raises(ValueError, match="rewards"):
        s.decide("x", [])
    with pytest.raises(ValueError, match="2 completions but 1 rewards"):
        s.record("x", ["a", "b"], [1.0])


def test_record_keeps_best_positive_trace():
    s = sched()
    s.record("x", ["bad", "worse"], [0.0, -1.0])
    assert s.best_trace("x") is None  # no reward > 0
    s.record("x", ["ok", "good", "good too"], [0.5, 1.0, 1.0])
    assert s.best_trace("x") == "good"  # first of the tied maxima
    s.record("x", ["meh"], [0.75])
    assert s.best_trace("x") == "good"  # 0.75 < 1.0 stored
    s.record("x", ["equal"], [1.0])
    assert s.best_trace("x") == "good"  # a tie does not replace
    s.record("x", ["better"], [1.5])
    assert (s.best_trace("x"), s.best_reward("x")) == ("better", 1.5)
    assert s.best_trace("other") is None


def test_state_round_trip_through_json_gives_identical_decisions():
    cfg = AugmentConfig(window=4, dead_zone=0.1, only_zero_variance=False)
    s = DifficultyScheduler(cfg)
    s.observe([0.1, 0.7, 0.3, 0.9, 0.2])  # window keeps the last 4: [0.7, 0.3, 0.9, 0.2]
    s.decide("a", [0.0, 0.1])
    s.record("a", ["<think>t</think><answer>B</answer>"], [1.0])
    state = json.loads(json.dumps(s.state_dict()))
    t = DifficultyScheduler(cfg)
    t.load_state_dict(state)
    assert t.state_dict() == s.state_dict()
    assert t.best_trace("a") == s.best_trace("a") and t.last_delta("a") == s.last_delta("a")
    for rewards in ([0.0, 0.0], [1.0, 1.0], [0.5, 0.55], [0.3, 0.9, 0.1]):
        assert t.decide("q", rewards) == s.decide("q", rewards)  # exact, not approx
    s.observe([1.0])
    t.observe([1.0])
    assert t.window_mean() == s.window_mean()
    # the window keeps sliding with the configured W after a load
    assert len(t.state_dict()["window"]) == 4


def test_load_into_smaller_window_keeps_newest():
    s = sched(window=4)
    s.observe([0.0, 0.25, 0.5, 0.75])
    t = sched(window=2)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.state_dict()["window"] == [0.5, 0.75]
    with pytest.raises(ValueError, match="version"):
        t.load_state_dict({"version": 99})
