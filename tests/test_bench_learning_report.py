"""scripts/bench_learning_report.py: the bootstrap intervals and the verdicts the learning benchmark's
document states (pure arithmetic on made-up runs; no training)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def rep():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_learning_report.py"
    spec = importlib.util.spec_from_file_location("bench_learning_report", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_learning_report"] = module
    spec.loader.exec_module(module)
    return module


def run(method, seed, acc):
    return {"method": method, "seed": seed, "final": {"accuracy": acc, "easy": acc, "hard": acc, "trace_exact": 0.0},
            "curve": [(50, 0.0, 0.0, 0.0), (75, acc - 0.1, 0.0, 0.0), (100, acc + 0.1, 0.0, 0.0)]}


def test_bootstrap_interval(rep):
    assert rep.bootstrap([0.5] * 5) == (0.5, 0.5, 0.5)
    mean, lo, hi = rep.bootstrap([0.1, 0.2, 0.3, 0.4, 0.5])
    assert mean == pytest.approx(0.3) and 0.1 <= lo < 0.3 < hi <= 0.5
    assert rep.bootstrap([0.1, 0.2, 0.3, 0.4, 0.5]) == (mean, lo, hi)  # fixed resampling seed


def test_paired_differences_and_verdicts(rep):
    # b is better than a on every seed by 0.1, although the seeds' levels overlap widely
    results = [run("a", s, 0.2 * s) for s in range(5)] + [run("b", s, 0.2 * s + 0.1) for s in range(5)]
    diff = rep.paired(results, "b", "a", "accuracy")
    assert diff == pytest.approx((0.1, 0.1, 0.1))
    assert rep.verdict(diff, 5) == "holds"
    assert rep.verdict(diff, 4).startswith("too few seeds")
    assert rep.verdict(rep.paired(results, "a", "b", "accuracy"), 5) == "reversed"
    mixed = [run("a", s, 0.5) for s in range(4)] + [run("b", s, 0.5 + d) for s, d in enumerate([0.1, -0.1, 0.2, -0.2])]
    assert rep.verdict(rep.paired(mixed, "b", "a", "accuracy"), 5).startswith("not resolved")
    assert rep.paired(results, "b", "missing", "accuracy") is None
    # the late mean averages the evaluations after half the run (75 and 100 here, not 50)
    assert rep.late(run("a", 0, 0.5)) == pytest.approx(0.5)
    assert rep.paired(results, "b", "a", "late") == pytest.approx((0.1, 0.1, 0.1))
    # only seeds both methods ran are paired
    assert rep.paired(results + [run("c", 0, 1.0)], "c", "a", "accuracy") == pytest.approx((1.0, 1.0, 1.0))
