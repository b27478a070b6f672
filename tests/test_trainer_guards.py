"""Inputs and states the trainer must refuse or handle without silently training on the wrong thing."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from mmgrpo.processors.formats import load_samples
from mmgrpo.trainer.loop import train
from mmgrpo.trainer.phases import reward_columns
from mmgrpo.trainer.rewards import REWARDS
from tests.test_sft import sft_cfg
from tests.trainer_utils import reward_file, tiny_train_config, weights


def test_duplicate_ids_are_refused(tiny_dir, task, tmp_path):
    rows = [json.loads(line) for line in task.train.read_text().splitlines()]
    rows[1]["id"] = rows[0]["id"]  # e.g. two questions about one video keyed by the video id
    dup = task.train.parent / "dup.jsonl"
    dup.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", reward_file(tmp_path), f"data.train=[{dup}]")
    with pytest.raises(ValueError, match=f"sample id '{rows[0]['id']}' is used by .*row 0.* and by .*row 1"):
        train(cfg)


def test_fresh_run_into_used_output_dir_and_rl_resume_of_sft_are_refused(tiny_dir, task, tmp_path):
    from mmgrpo.trainer.sft import sft

    rewards = reward_file(tmp_path)
    train(tiny_train_config(tiny_dir, task, tmp_path / "run", rewards, "max_steps=1"))
    with pytest.raises(ValueError, match="already holds checkpoint-1: continue it with resume_from=auto"):
        train(tiny_train_config(tiny_dir, task, tmp_path / "run", rewards, "max_steps=1"))
    sft_ckpt = sft(sft_cfg(tiny_dir, task, tmp_path / "sft", "max_steps=1", "lora.enabled=false"))
    with pytest.raises(ValueError, match="is an `mmgrpo sft` checkpoint: start RL from it with init_from"):
        train(tiny_train_config(tiny_dir, task, tmp_path / "sft", rewards, f"resume_from={sft_ckpt}"))


def test_rewards_see_the_parsed_answer_of_a_swift_row(tmp_path, task):
    """ms-swift rows may carry the reference only as the assistant turn (no `answer` column)."""
    video = json.loads(task.train.read_text().splitlines()[0])["video"]
    row = {"messages": [{"role": "user", "content": "<video>What colour? A. red B. green"},
                        {"role": "assistant", "content": "<answer>B</answer>"}],
           "videos": [video], "options": json.dumps(["A. red", "B. green"])}
    path = task.train.parent / "swift_row.jsonl"
    path.write_text(json.dumps(row) + "\n")
    sample = load_samples(str(path)).samples[0]
    assert "answer" not in sample.columns and sample.answer == "B"
    columns = {k: [v] * 2 for k, v in reward_columns(sample).items()}
    assert REWARDS["accuracy"](["<answer>B</answer>", "<answer>A</answer>"], **columns) == [1.0, 0.0]


FLAT = '''
def flat(completions, **columns):
    return [1.0] * len(completions)
'''


def test_no_update_when_every_group_is_flat(tiny_dir, task, tmp_path):
    path = tmp_path / "flat.py"
    path.write_text(textwrap.dedent(FLAT))
    final = train(tiny_train_config(tiny_dir, task, tmp_path / "run", path, f"reward.functions=[{path}:flat]",
                                    "lora.enabled=false", "max_steps=2"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped_update"] == 1.0 and r["zero_std_frac"] == 1.0 for r in rows)
    base, after = weights(tiny_dir), weights(final)
    assert all(torch.equal(base[k], after[k]) for k in base)


def test_dapo_preset_trains_with_dapo_settings(tiny_dir, task, tmp_path, monkeypatch):
    """`loss.preset=dapo` reaches the loss as DAPO's settings (clip-higher, token mean, no KL), never
    as GRPO's, and the checkpoint records them; an unknown preset or objective names its key."""
    from mmgrpo.config import ConfigError
    from mmgrpo.trainer import update

    seen = []
    real = update.compute_loss
    monkeypatch.setattr(update, "compute_loss", lambda x, cfg, norm: seen.append(cfg) or real(x, cfg, norm))
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", reward_file(tmp_path), "loss.preset=dapo",
                            "lora.enabled=false", "max_steps=1", "reward.overlong_buffer=2")
    assert cfg.dynamic_sampling.enabled and cfg.reward.overlong_penalty == 1.0  # DAPO §3.2, §3.4
    final = train(cfg)
    assert seen and all((c.objective, c.epsilon_low, c.epsilon_high, c.aggregation, c.beta)
                        == ("clipped_token", 0.2, 0.28, "token_mean", 0.0) for c in seen)
    recorded = json.loads((final / "trainer_state.json").read_text())["config"]
    assert recorded["loss"]["epsilon_high"] == 0.28 and recorded["advantage"]["scale"] == "group"
    for bad, key in (("loss.preset=dapoo", "loss.preset"), ("loss.objective=dapo", "loss.objective")):
        with pytest.raises(ConfigError, match=f"^{key}: "):
            tiny_train_config(tiny_dir, task, tmp_path / "x", reward_file(tmp_path), bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_is_an_error_and_the_weights_are_kept(bad):
    """An AdamW step on NaN/inf gradients would turn every weight into NaN, and the next checkpoint
    with it: the update refuses, with the weights and optimizer state as they were."""
    from accelerate import Accelerator

    from mmgrpo.trainer.update import NonFiniteGradientError, PolicyParts, optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    parts = PolicyParts(Accelerator(cpu=True), model, None, opt, sched)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.ones(1, 3)).sum().backward()
    model.weight.grad[0, 0] = bad
    with pytest.raises(NonFiniteGradientError, match="weights were not updated"):
        optimizer_step(parts, max_grad_norm=1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert opt.state == {} and all(p.grad is None for p in model.parameters())
    model(torch.ones(1, 3)).sum().backward()  # a finite gradient still steps
    assert optimizer_step(parts, max_grad_norm=1.0) > 0
    assert not torch.equal(model.weight, before["weight"])
