"""T-GRPO (Video-R1, arXiv 2503.21776, eq. 1): the frames really are shuffled, the bonus rule
(hand-computed), one batched rollout of G/2 per video, only the ordered group trained. Exact resume
with T-GRPO: tests/test_trainer_dynamic.py; two processes: tests/test_distributed_methods.py."""
from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from mmgrpo.config import TrainConfig, load_config
from mmgrpo.processors.sample import PromptInputs, Sample, VisionInputs
from mmgrpo.trainer import update
from mmgrpo.trainer.loop import train
from mmgrpo.trainer.records import RolloutGroup
from mmgrpo.trainer.temporal import frame_order, shuffled_prompt, temporal_bonus
from tests.trainer_utils import reward_file, small_task, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_thread")
NAN = float("nan")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return small_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    return reward_file(tmp_path_factory.mktemp("rewards"))


def test_frame_order_is_a_permutation_and_never_the_identity():
    for frames in (2, 3, 4, 8):
        for seed in range(50):
            order = frame_order(frames, torch.Generator().manual_seed(seed))
            assert sorted(order) == list(range(frames)) and order != list(range(frames)), (frames, seed, order)


def test_the_shuffled_prompt_shows_the_same_frames_in_another_order(tiny_dir, task, rewards, tmp_path):
    from mmgrpo.trainer.phases import encode
    from mmgrpo.trainer.setup import setup

    run = setup(tiny_train_config(tiny_dir, task, tmp_path / "r", rewards, "loss.preset=t_grpo", "loss.beta=0.0"))
    sample = run.samples[0]
    ordered = encode(run, sample)
    group = RolloutGroup(ordered, torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1), torch.zeros(4, dtype=torch.bool),
                         ("",) * 4, 0, "none", 0.0)
    shuffled, (order,) = shuffled_prompt(run, group)
    (video,) = run.encoder.load_media(sample)  # frames [T, 3, H, W] as decoded
    assert order != tuple(range(video.frames.shape[0]))
    # the shuffled prompt is exactly the prompt built from the permuted frames ...
    rebuilt = run.encoder.build(sample, [dataclasses.replace(video, frames=video.frames[list(order)])])
    torch.testing.assert_close(shuffled.vision.pixel_values_videos, rebuilt.vision.pixel_values_videos)
    # ... with the same tokens and grid, and different pixels than the ordered prompt
    assert torch.equal(shuffled.input_ids.cpu(), ordered.input_ids.cpu())
    assert torch.equal(shuffled.vision.video_grid_thw, ordered.vision.video_grid_thw)
    assert not torch.equal(shuffled.vision.pixel_values_videos, ordered.vision.pixel_values_videos)
    # same frames, other order: the sorted pixel multiset is unchanged
    assert torch.equal(shuffled.vision.pixel_values_videos.flatten().sort().values,
                       ordered.vision.pixel_values_videos.flatten().sort().values)
    # and a function of (seed, step, stream): the same order again, another stream another one
    assert shuffled_prompt(run, group)[1] == (order,)


def _group(texts, stream, answer="B"):
    sample = Sample(id=f"s{stream}", prompt=[{"role": "user", "content": "q"}], media=[], answer=answer,
                    problem_type="multiple_choice", options=["red", "green", "blue", "yellow"])
    prompt = PromptInputs(sample, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), VisionInputs())
    n = len(texts)
    return RolloutGroup(prompt, torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1), torch.zeros(n, dtype=torch.bool),
                        tuple(texts), stream, "none", 0.0)


def test_bonus_rule_hand_computed():
    """Accuracy reference B. alpha 0.3, mu 0.8, reward columns [accuracy (weight 1), temporal].
    g0: ordered 3/4 correct (p 0.75), shuffled 1/2 (p~ 0.5): 0.75 >= 0.4 -> 0.3 for the 3 correct
    g1: ordered 1/4 (0.25), shuffled 2/2 (1.0): 0.25 < 0.8 -> 0 for all (the column is set: 0, not None)
    g2: ordered 2/5 (0.4), shuffled 1/2 (0.5): 0.4 >= 0.8 * 0.5 = 0.4 -> applied (the rule is >=)
    g3: no shuffled rollout (no video): None (NaN)"""
    cfg = load_config(TrainConfig, None, ["loss.preset=t_grpo", "reward.functions=[accuracy]", "reward.weights=[1.0]"])
    run = SimpleNamespace(cfg=cfg)
    right, wrong = "<answer>B</answer>", "<answer>A</answer>"
    groups = (_group([right, right, right, wrong], 0), _group([right, wrong, wrong, wrong], 1),
              _group([right, right, wrong, wrong, wrong], 2), _group([right, wrong], 3))
    shuffled = ((_group([right, wrong], 0), ((1, 0),)), (_group([right, right], 1), ((1, 0),)),
                (_group([wrong, right], 2), ((1, 0),)), None)
    rewards = [torch.full((g.size, 2), NAN, dtype=torch.float64) for g in groups]
    out, contrasts = [], []
    for g, s, r in zip(groups, shuffled, rewards):  # groups of different G: one at a time
        o, c = temporal_bonus(run, (g,), (s,), r[None])
        out.append(o[0, :, 1].tolist())
        contrasts.append(c[0])
    assert out[0] == [0.3, 0.3, 0.3, 0.0]
    assert out[1] == [0.0, 0.0, 0.0, 0.0]
    assert out[2] == [0.3, 0.3, 0.0, 0.0, 0.0]
    assert all(v != v for v in out[3])  # NaN: not applicable
    assert [(c.ordered_accuracy, c.shuffled_accuracy, c.applied) for c in contrasts[:3]] == [
        (0.75, 0.5, True), (0.25, 1.0, False), (0.4, 0.5, True)]
    assert contrasts[3] is None
    # the paper's eq. 1, p > p~ (margin 1, strict): g0 0.75 > 0.5 applied, g2 0.4 > 0.5 not
    strict = SimpleNamespace(cfg=load_config(TrainConfig, None, ["loss.preset=t_grpo", "reward.functions=[accuracy]",
                                                                 "reward.weights=[1.0]", "temporal.margin=1.0",
                                                                 "temporal.strict=true"]))
    assert [temporal_bonus(strict, (g,), (s,), r[None])[1][0].applied
            for g, s, r in list(zip(groups, shuffled, rewards))[:3]] == [True, False, False]


def test_t_grpo_trains_the_ordered_groups_only(tiny_dir, task, rewards, tmp_path, monkeypatch):
    """Per step: one rollout call for the 2 ordered prompts (G = 4) and one for their 2 shuffled
    copies (G/2 = 2); the loss sees the 2 ordered groups of 4 completions; metrics report it."""
    from mmgrpo.models.backends import HFBackend

    calls, shapes = [], []
    real_generate, real_loss = HFBackend.generate, update.compute_loss
    monkeypatch.setattr(HFBackend, "generate", lambda self, policy, prompts, seeds, n=None: calls.append(
        (len(prompts), n)) or real_generate(self, policy, prompts, seeds, n))
    monkeypatch.setattr(update, "compute_loss", lambda x, cfg, norm: shapes.append(tuple(x.logp.shape[:2])) or
                        real_loss(x, cfg, norm))
    out = tmp_path / "run"
    train(tiny_train_config(tiny_dir, task, out, rewards, "loss.preset=t_grpo", "lora.enabled=false"))
    assert calls == [(2, None), (2, 2)] * 2
    assert shapes == [(2, 4)] * 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["temporal/groups"] == 2.0 and 0.0 <= r["temporal/bonus_frac"] <= 1.0
        assert "reward/temporal/mean" in r and "advantage/temporal/share" in r
        assert math.isfinite(r["reward/temporal/mean"]) and r["reward/temporal/mean"] >= 0.0  # 0 or the bonus
