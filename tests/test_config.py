"""Config: YAML + key=value overrides, validated with messages that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmgrpo.config import ConfigError, SFTConfig, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_and_overrides():
    cfg = load_config(TrainConfig, None, ["loss.name=grpo", "optim.lr=3e-4", "reward.functions=accuracy",
                                          "reward.weights=[2]", "vision.nframes=8", "augment.enabled=true"])
    assert cfg.loss.name == "grpo" and cfg.optim.lr == 3e-4 and cfg.vision.nframes == 8
    assert cfg.reward.functions == ["accuracy"] and cfg.reward.weights == [2.0]
    assert cfg.augment.enabled is True
    assert load_config(TrainConfig).generation.num_generations == 8  # one default per field


def test_yaml_then_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  name: dapo\nmax_steps: 7\n")
    cfg = load_config(TrainConfig, path, ["max_steps=9"])
    assert cfg.loss.name == "dapo" and cfg.max_steps == 9


@pytest.mark.parametrize(
    "override,message",
    [
        (["loss.nme=grpo"], "unknown key loss.nme"),
        (["optim.lr=fast"], "optim.lr: expected a number"),
        (["loss.name=ppo"], "loss.name: 'ppo' is not one of"),
        (["max_steps=1.5"], "max_steps: expected an integer"),
        (["generation.num_generations=1"], "num_generations must be >= 2"),
        (["reward.weights=[1.0]"], "reward.weights has 1 entries for 2 reward.functions"),
        (["vision.min_pixels=999999999"], "vision.min_pixels"),
        (["resume_from=auto", "init_from=x"], "resume_from and init_from exclude each other"),
        (["loss=3"], "loss: expected a mapping"),
        (["prompts_per_step=3", "optim.grad_accum=2"], "multiple of optim.grad_accum"),
    ],
)
def test_invalid(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(TrainConfig, None, override)


@pytest.mark.parametrize("name", ["demo.yaml", "qwen2_5_vl_3b_video.yaml", "qwen2_5_vl_7b_video.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(TrainConfig, CONFIGS / name)
    assert cfg.generation.num_generations == 8


def test_sft_config():
    assert load_config(SFTConfig, None, ["batch_size=4"]).batch_size == 4


def test_cli_reports_config_errors(capsys):
    from mmgrpo.trainer.cli import train_main

    with pytest.raises(SystemExit) as e:
        train_main(["loss.bogus=1"])
    assert e.value.code == 2
    assert "unknown key loss.bogus" in capsys.readouterr().err


def test_loss_preset_fills_only_unset_fields():
    plain = load_config(TrainConfig, None, ["loss.name=dapo"])
    assert (plain.loss.epsilon_high, plain.loss.aggregation) == (0.2, "seq_mean_token_mean")  # name = objective only
    dapo = load_config(TrainConfig, None, ["loss.name=dapo", "loss.preset=true"])
    assert (dapo.loss.epsilon_high, dapo.loss.aggregation, dapo.loss.beta) == (0.28, "token_mean", 0.0)
    mine = load_config(TrainConfig, None, ["loss.name=dr_grpo", "loss.preset=true", "loss.beta=0.01"])
    assert (mine.loss.advantage_scale, mine.loss.aggregation, mine.loss.beta) == ("none", "seq_sum_const", 0.01)
