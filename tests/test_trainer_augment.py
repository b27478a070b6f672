"""Difficulty-aware augmentation inside training: metrics, determinism, exact resume."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from mmgrpo.trainer.checkpoint import load_trainer_state
from mmgrpo.trainer.loop import train
from tests.trainer_utils import tiny_train_config, weights

# Even-numbered samples always score 1 (flat, easy groups: the "harder" branch perturbs their
# video); odd ones score by completion length (groups with variance, so training moves weights).
REWARD = '''
def easy_or_length(completions, id, **columns):
    return [1.0 if int(i[-1]) % 2 == 0 else len(c[0]["content"]) / 20.0 for c, i in zip(completions, id)]
'''


def _config(tiny_dir, task, tmp_path, out, *extra):
    path = tmp_path / "da_reward.py"
    path.write_text(textwrap.dedent(REWARD))
    return tiny_train_config(
        tiny_dir, task, tmp_path / out, path, f"reward.functions=[{path}:easy_or_length]",
        "augment.enabled=true", "augment.dead_zone=0.05", "augment.harder=[gaussian_noise,frame_mask]",
        "prompts_per_step=4", "max_steps=3", *extra,
    )


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_da_metrics_and_determinism(tiny_dir, task, tmp_path):
    a = train(_config(tiny_dir, task, tmp_path, "a"))
    rows = _rows(tmp_path / "a")
    for key in ("augment/zero_std_frac_after", "augment/harder", "augment/easier", "augment/mean_strength"):
        assert all(key in r for r in rows), key
    # step 1 has an empty replay window: nothing is augmented; later steps perturb the easy groups
    assert rows[0]["augment/harder"] == 0
    assert sum(r["augment/harder"] for r in rows[1:]) > 0
    assert all(r["augment/zero_std_frac_after"] <= r["zero_std_frac"] for r in rows)
    assert any(r["augment/mean_strength"] > 0 for r in rows[1:])
    state = load_trainer_state(a).augment
    assert state is not None and len(state["window"]) > 0
    # same seed, same everything
    b = train(_config(tiny_dir, task, tmp_path, "b"))
    assert [r["augment/harder"] for r in _rows(tmp_path / "b")] == [r["augment/harder"] for r in rows]
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_da_resume_is_exact(tiny_dir, task, tmp_path):
    full = train(_config(tiny_dir, task, tmp_path, "full", "save_every=1"))
    # a run stopped after step 2 (its checkpoint carries the scheduler window), then resumed
    train(_config(tiny_dir, task, tmp_path, "part", "max_steps=2", "save_every=1"))
    resumed = train(_config(tiny_dir, task, tmp_path, "part", "save_every=1", "resume_from=auto"))
    assert load_trainer_state(resumed).augment == load_trainer_state(full).augment
    wa, wb = weights(full), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


HARD = '''
def hard_or_length(completions, id, **columns):
    return [0.0 if int(i[-1]) % 2 == 0 else 1.0 + len(c[0]["content"]) / 20.0 for c, i in zip(completions, id)]
'''


@pytest.mark.parametrize("easier", [True, False])
def test_easier_setting_gates_hints(tiny_dir, task, tmp_path, easier):
    """Even samples always score 0: flat groups harder than the window mean, i.e. "easier" decisions.
    With augment.easier=true a hint is attempted for them; with false, never."""
    import mmgrpo.trainer.augment_phase as phase

    calls = []
    real = phase.easier_prompt
    phase.easier_prompt = lambda run, g, d: calls.append(g.sample_id) or real(run, g, d)
    try:
        path = tmp_path / "hard.py"
        path.write_text(textwrap.dedent(HARD))
        train(tiny_train_config(tiny_dir, task, tmp_path / "run", path, f"reward.functions=[{path}:hard_or_length]",
                                "augment.enabled=true", "augment.dead_zone=0.05", f"augment.easier={easier}",
                                "prompts_per_step=4", "max_steps=3"))
    finally:
        phase.easier_prompt = real
    assert bool(calls) == easier


@pytest.mark.parametrize("harder", ["[gaussian_noise]", "[]"])
def test_empty_harder_turns_perturbations_off(tiny_dir, task, tmp_path, harder):
    """Even samples always score 1: flat groups easier than the window mean ("harder" decisions).
    An empty augment.harder rolls out no perturbed copy of them (the easier-only ablation)."""
    train(_config(tiny_dir, task, tmp_path, "run", f"augment.harder={harder}"))
    rows = _rows(tmp_path / "run")
    assert (sum(r["augment/harder"] for r in rows) > 0) == (harder != "[]")
