"""Several updates per rollout (optim.updates_per_rollout = mu > 1) end to end, and the trainer's
other quiet invariants: flat groups kept for the KL when beta > 0, Reg-GRPO's divisor counting
contributing groups only, the hint-trace reward floor.

The loss function is wrapped to record what it receives on every pass: a bug that recomputed the
old log-probs before each pass (every ratio 1: clipping, GSPO and Reg-GRPO's ratio inert) fails
here."""
from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch

from mmgrpo.config import AugmentConfig, ConfigError, LoraConfig, SFTConfig, TrainConfig, load_config
from mmgrpo.trainer import update
from mmgrpo.trainer.loop import train
from tests.trainer_utils import tiny_train_config, weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def calls(monkeypatch):
    """Every compute_loss call of the update: log-ratio |max| over real tokens, loss, metrics, norm, zero_std."""
    seen = []
    real = update.compute_loss

    def recording(x, cfg, norm):
        out = real(x, cfg, norm)
        m = x.mask.bool()
        gap = float((x.logp.detach() - x.old_logp)[m].abs().max()) if bool(m.any()) else 0.0
        seen.append(SimpleNamespace(gap=gap, loss=float(out.loss.detach()), metrics={k: float(v) for k, v in out.metrics.items()}, norm=norm,
                                    zero_std=x.zero_std.tolist()))
        return out

    monkeypatch.setattr(update, "compute_loss", recording)
    return seen


def _run(tiny_dir, task, rewards, out, *overrides):
    return train(tiny_train_config(tiny_dir, task, out, rewards, "lora.enabled=false", "max_steps=1", *overrides))


def test_second_pass_sees_ratios_away_from_one(tiny_dir, task, rewards, tmp_path, calls):
    _run(tiny_dir, task, rewards, tmp_path / "r", "loss.preset=grpo", "loss.beta=0.0", "optim.updates_per_rollout=3")
    assert len(calls) == 3  # one micro-batch, three passes over the same rollout
    first, second, third = (c.gap for c in calls)
    assert first < 1e-5  # pass 1: the old policy is the current one (no dropout): ratio 1
    assert second > 1e-3 and third > second  # later passes: the weights moved, the old log-probs did not


def test_clipping_engages_on_later_passes(tiny_dir, task, rewards, tmp_path, calls):
    _run(tiny_dir, task, rewards, tmp_path / "r", "loss.preset=grpo", "loss.beta=0.0", "optim.updates_per_rollout=2",
         "optim.lr=1e-2")
    assert calls[0].metrics["clip_frac"] == 0.0
    assert calls[1].metrics["clip_frac"] > 0.0, calls[1].metrics


@pytest.mark.parametrize("mu", [1, 2])
def test_gspo_and_grpo_differ_only_off_policy(tiny_dir, task, rewards, tmp_path, calls, mu):
    """Same clip range for both: on-policy GSPO's loss and gradient are GRPO's (GSPO §4.2); with
    mu = 2 the sequence ratio of pass 2 differs from the token ratios, and so do loss and weights."""
    common = ["loss.beta=0.0", "loss.epsilon_low=0.2", "loss.epsilon_high=0.2", f"optim.updates_per_rollout={mu}",
              "loss.aggregation=seq_mean_token_mean"]
    a = weights(_run(tiny_dir, task, rewards, tmp_path / "grpo", "loss.objective=clipped_token", *common))
    grpo = [c.loss for c in calls]
    b = weights(_run(tiny_dir, task, rewards, tmp_path / "gspo", "loss.objective=gspo", *common))
    gspo = [c.loss for c in calls[len(grpo):]]
    assert gspo[0] == pytest.approx(grpo[0], rel=1e-6)  # pass 1 is on-policy in both
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    if mu == 1:
        # equal up to rounding, which Adam's first (sign-like) step turns into moves of ~1e-6
        assert diff < 1e-5, diff
    else:
        assert abs(gspo[1] - grpo[1]) > 1e-3 * abs(grpo[1]), (grpo, gspo)
        assert diff > 1e-4, diff  # measured 1.7e-3


def test_reg_grpo_z_scores_are_not_dropout_noise(tiny_dir, task, rewards, tmp_path, calls):
    """Pass 1 of mu = 2: every log-ratio is 0 up to rounding, so the z-score has nothing to amplify
    (rho_std ~ 0); pass 2 regresses on real ratios. LoRA dropout, which would make pass 1's ratios
    dropout noise z-scored to unit variance, is off in RL configs and refused with mu > 1."""
    _run(tiny_dir, task, rewards, tmp_path / "r", "loss.preset=reg_grpo", "loss.beta=0.0", "optim.updates_per_rollout=2")
    assert calls[0].metrics["rho_std"] < 1e-5
    assert calls[1].metrics["rho_std"] > 1e-3
    assert TrainConfig().lora.dropout == 0.0 and load_config(TrainConfig, None, ["lora.r=8"]).lora.dropout == 0.0
    assert SFTConfig().lora.dropout == LoraConfig().dropout == 0.05  # SFT keeps its regulariser
    with pytest.raises(ConfigError, match="lora.dropout=0.1 with optim.updates_per_rollout=2"):
        load_config(TrainConfig, None, ["lora.dropout=0.1", "optim.updates_per_rollout=2"])


EVEN_FLAT = '''
def even_flat(completions, id, **columns):
    even = int(id[0].rsplit("-", 1)[1]) % 2 == 0
    return [1.0 if even else float(len(c[0]["content"])) / 10.0 for c in completions]
'''


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_flat_groups_join_the_loss_only_for_the_kl(tiny_dir, task, tmp_path, calls, beta):
    """4 prompts in data order, 2 of them with flat rewards. beta > 0: all 4 groups are trained on
    (their KL term has a gradient), beta = 0: only the 2 with a signal. Either way Reg-GRPO's
    regression divides by the 2 contributing groups."""
    path = tmp_path / "even_flat.py"
    path.write_text(textwrap.dedent(EVEN_FLAT))
    _run(tiny_dir, task, path, tmp_path / "r", f"reward.functions=[{path}:even_flat]", "prompts_per_step=4",
         "data.shuffle=false", "loss.preset=reg_grpo", f"loss.beta={beta}")
    (call,) = calls
    assert call.norm.groups == 2.0
    assert call.zero_std == ([True, False, True, False] if beta > 0 else [False, False])
    assert call.metrics["skipped_groups"] == (2.0 if beta > 0 else 0.0)


def test_hint_traces_need_the_reward_floor():
    """A well-formatted wrong answer (total 0.5 under accuracy 1.0 + format 0.5) is never stored as
    a hint; a correct one (1.5) is; a lower floor is honoured."""
    from mmgrpo.augment import DifficultyScheduler
    from mmgrpo.trainer.augment_phase import record_traces

    def run(floor):
        cfg = AugmentConfig(trace_min_reward=floor)
        return SimpleNamespace(cfg=SimpleNamespace(augment=cfg), augment=DifficultyScheduler(cfg))

    r = run(1.0)
    record_traces(r, "a", ("<answer>B</answer>",), torch.tensor([0.5]))
    assert r.augment.best_trace("a") is None
    record_traces(r, "a", ("<answer>B</answer>", "<answer>C</answer>"), torch.tensor([0.5, 1.5]))
    assert r.augment.best_trace("a") == "<answer>C</answer>"
    low = run(0.4)
    record_traces(low, "a", ("<answer>B</answer>",), torch.tensor([0.5]))
    assert low.augment.best_trace("a") == "<answer>B</answer>"
