"""DAPO dynamic sampling (arXiv 2503.14476 §3.2) in the trainer: flat groups replaced by new ones,
the round cap, exact resume (with T-GRPO on too); the overlong term and per-objective advantage
shares in the metrics."""
from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest
import torch

from mmgrpo.trainer import update
from mmgrpo.trainer.dynamic import chosen_streams
from mmgrpo.trainer.loop import train
from tests.trainer_utils import tiny_train_config, weights

pytestmark = pytest.mark.usefixtures("one_thread")

# even-numbered samples score 1 whatever the completion (flat groups), odd ones by length
EVEN_FLAT = '''
def even_flat(completions, id, **columns):
    even = int(id[0].rsplit("-", 1)[1]) % 2 == 0
    return [1.0 if even else float(len(c[0]["content"])) / 10.0 for c in completions]
'''


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "even_flat.py"
    path.write_text(textwrap.dedent(EVEN_FLAT))
    return path


@pytest.fixture
def losses(monkeypatch):
    """The groups each compute_loss call trains on: (zero_std flags, number of groups)."""
    seen = []
    real = update.compute_loss
    monkeypatch.setattr(update, "compute_loss",
                        lambda x, cfg, norm: seen.append(SimpleNamespace(zero_std=x.zero_std.tolist())) or real(x, cfg, norm))
    return seen


def _cfg(tiny_dir, task, reward, out, *extra):
    return tiny_train_config(tiny_dir, task, out, reward, f"reward.functions=[{reward}:even_flat]", "prompts_per_step=4",
                             "data.shuffle=false", "dynamic_sampling.enabled=true", "loss.preset=grpo", "loss.beta=0.0",
                             *extra)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_chosen_streams():
    # informative 1, 3, 6 (stream order), flat 0, 2, 4, 5: size 2 -> {1, 3}; size 5 -> {1, 3, 6} + flat {0, 2}
    pool = [(6, True), (0, False), (1, True), (2, False), (3, True), (4, False), (5, False)]
    assert chosen_streams(pool, 2) == {1, 3}
    assert chosen_streams(pool, 5) == {1, 3, 6, 0, 2}


def test_flat_groups_are_replaced_until_the_batch_is_full(tiny_dir, task, reward, tmp_path, losses):
    """Data order 0..7: round 1 draws samples 0-3 (1 and 3 informative), round 2 samples 4-7 (5, 7):
    the step trains on 4 informative groups; the next step starts at sample 0 of epoch 2."""
    train(_cfg(tiny_dir, task, reward, tmp_path / "run", "max_steps=2"))
    rows = _rows(tmp_path / "run")
    for r in rows:
        assert (r["dynamic/rounds"], r["dynamic/sampled_groups"], r["dynamic/informative_frac"]) == (2.0, 8.0, 0.5)
        assert r["zero_std_frac"] == 0.0 and r["active_groups"] == 4.0
    assert [c.zero_std for c in losses] == [[False] * 4] * 2
    assert rows[-1]["count/dynamic_sampling_dropped_groups"] == 8.0  # 4 flat groups per step
    assert rows[-1].get("count/dynamic_sampling_short_steps", 0.0) == 0.0
    assert rows[-1]["epoch"] == 2.0  # 16 prompts drawn from 8 samples


def test_round_cap_trains_on_what_there_is_and_counts_it(tiny_dir, task, reward, tmp_path, losses):
    train(_cfg(tiny_dir, task, reward, tmp_path / "run", "max_steps=2", "dynamic_sampling.max_rounds=1"))
    rows = _rows(tmp_path / "run")
    assert [r["dynamic/rounds"] for r in rows] == [1.0, 1.0]
    assert rows[-1]["count/dynamic_sampling_short_steps"] == 2.0
    # 2 informative groups, topped up to 4 with the flat ones (which carry no gradient at beta 0)
    assert all(r["zero_std_frac"] == 0.5 and r["active_groups"] == 2.0 for r in rows)


def test_off_by_default_and_on_with_dapo():
    from mmgrpo.config import TrainConfig, load_config

    assert not TrainConfig().dynamic_sampling.enabled and TrainConfig().reward.overlong_penalty == 0.0
    dapo = load_config(TrainConfig, None, ["loss.preset=dapo"])
    assert dapo.dynamic_sampling.enabled and dapo.reward.overlong_penalty == 1.0
    assert not load_config(TrainConfig, None, ["loss.preset=dapo", "dynamic_sampling.enabled=false"]).dynamic_sampling.enabled


def test_resume_is_exact_with_dynamic_sampling_and_t_grpo(tiny_dir, task, reward, tmp_path):
    """Two rounds per step (the data position advances by 8 prompts a step), T-GRPO's shuffles and
    shuffled rollouts on: a run stopped after step 2 and resumed ends bit-identical."""
    common = ["save_every=1", "temporal.enabled=true"]
    full = train(_cfg(tiny_dir, task, reward, tmp_path / "full", "max_steps=3", *common))
    train(_cfg(tiny_dir, task, reward, tmp_path / "part", "max_steps=2", *common))
    resumed = train(_cfg(tiny_dir, task, reward, tmp_path / "part", "max_steps=3", *common, "resume_from=auto"))
    assert _rows(tmp_path / "part")[-1]["dynamic/rounds"] == 2.0
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "full")[-1]["loss"] == _rows(tmp_path / "part")[-1]["loss"]


def test_dapo_overlong_term_and_objective_shares(tiny_dir, task, reward, tmp_path):
    """The dapo preset adds the overlong term (weight 1) to the user's rewards; the metrics show each
    term's mean |advantage share| and its share of the total, which sum to 1."""
    out = tmp_path / "run"
    train(_cfg(tiny_dir, task, reward, out, "max_steps=1", "loss.preset=dapo", "reward.overlong_buffer=3"))
    (row,) = _rows(out)
    names = ("even_flat", "overlong")
    assert all(f"reward/{n}/mean" in row and f"advantage/{n}/share" in row for n in names)
    assert sum(row[f"advantage/{n}/share"] for n in names) == pytest.approx(1.0)
    assert row["reward/overlong/mean"] <= 0.0  # a penalty: 0 inside the budget window, negative near it
