"""Config: YAML + key=value overrides, validated with messages that name the key."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mmgrpo.config import ConfigError, SFTConfig, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_and_overrides():
    cfg = load_config(TrainConfig, None, ["loss.objective=gspo", "optim.lr=3e-4", "reward.functions=accuracy",
                                          "reward.weights=[2]", "vision.nframes=8", "augment.enabled=true"])
    assert cfg.loss.objective == "gspo" and cfg.optim.lr == 3e-4 and cfg.vision.nframes == 8
    assert cfg.reward.functions == ("accuracy",) and cfg.reward.weights == (2.0,)
    assert cfg.augment.enabled is True
    assert load_config(TrainConfig).generation.num_generations == 8  # one default per field


def test_yaml_then_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  preset: dapo\nmax_steps: 7\n")
    cfg = load_config(TrainConfig, path, ["max_steps=9"])
    assert cfg.loss.preset == "dapo" and cfg.loss.objective == "clipped_token" and cfg.max_steps == 9


@pytest.mark.parametrize(
    "override,message",
    [
        (["loss.nme=grpo"], "unknown key loss.nme"),
        (["optim.lr=fast"], "optim.lr: expected a number"),
        (["loss.objective=ppo"], "loss.objective: 'ppo' is not one of"),
        (["loss.preset=ppo"], "loss.preset: 'ppo' is not one of"),
        (["loss.name=dapo"], "loss.name is no longer a setting: use loss.objective"),
        (["loss.advantage_scale=none"], "loss.advantage_scale is no longer a setting: use advantage.scale"),
        (["max_steps=1.5"], "max_steps: expected an integer"),
        (["generation.num_generations=1"], "generation.num_generations: 1 is out of range"),
        (["reward.weights=[1.0]"], "reward.weights has 1 entries for 2 reward.functions"),
        (["vision.min_pixels=999999999"], "vision.min_pixels"),
        (["loss=3"], "loss: expected a mapping"),
        (["data.prompt_key="], "data.prompt_key and data.answer_key must name columns"),
        (["data.format=videor2"], "data.format: 'videor2' is not one of"),
        (["reward.completions=strings"], "reward.completions: 'strings' is not one of"),
        (["prompts_per_step=3", "optim.grad_accum=2"], "multiple of optim.grad_accum"),
    ],
)
def test_invalid(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(TrainConfig, None, override)


@pytest.mark.parametrize("name", ["demo.yaml", "qwen2_5_vl_3b_video.yaml", "qwen2_5_vl_7b_video.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(TrainConfig, CONFIGS / name, ["data.eval=[val.jsonl]"])  # as the README runs them
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
    plain = load_config(TrainConfig, None, ["loss.objective=clipped_token"])
    assert (plain.loss.epsilon_high, plain.loss.aggregation) == (0.2, "seq_mean_token_mean")  # objective only
    dapo = load_config(TrainConfig, None, ["loss.preset=dapo"])
    assert (dapo.loss.objective, dapo.loss.epsilon_high, dapo.loss.aggregation, dapo.loss.beta) == (
        "clipped_token", 0.28, "token_mean", 0.0)
    mine = load_config(TrainConfig, None, ["loss.preset=dr_grpo", "loss.beta=0.01"])
    assert (mine.advantage.scale, mine.loss.aggregation, mine.loss.beta) == ("none", "seq_sum_const", 0.01)


def test_config_is_frozen():
    cfg = load_config(TrainConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


# Each value below was accepted before range checking and either broke training silently
# (gradient ascent, no sampling, no checkpoint...) or crashed much later with an unrelated error.
OUT_OF_RANGE = [
    ("optim.max_grad_norm=-1", "optim.max_grad_norm"), ("generation.top_p=0", "generation.top_p"),
    ("generation.top_p=2", "generation.top_p"), ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("save_total_limit=0", "save_total_limit"), ("vision.fps=0", "vision.fps"), ("vision.nframes=0", "vision.nframes"),
    ("max_steps=0", "max_steps"), ("generation.max_new_tokens=0", "generation.max_new_tokens"),
    ("log_every=0", "log_every"), ("generation.temperature=nan", "generation.temperature"),
    ("generation.temperature=.nan", "generation.temperature"), ("generation.top_k=-1", "generation.top_k"),
    ("optim.updates_per_rollout=0", "optim.updates_per_rollout"), ("vision.max_pixels=0", "vision.max_pixels"),
    ("optim.lr=-1e-5", "optim.lr"), ("optim.lr=nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"),
    ("optim.betas=[0.9,1.0]", "optim.betas"), ("lora.dropout=1", "lora.dropout"), ("lora.r=0", "lora.r"),
    ("reward.weights=[1,.nan]", "reward.weights"), ("loss.beta=-0.1", "loss.beta"), ("loss.reg_eps=0", "loss.reg_eps"),
    ("loss.epsilon_low=1.5", "loss.epsilon_low"), ("advantage.eps=0", "advantage.eps"),
    ("prompts_per_step=0", "prompts_per_step"), ("optim.grad_accum=0", "optim.grad_accum"),
    ("eval.batch_size=0", "eval.batch_size"), ("augment.window=0", "augment.window"),
    ("reward.timeout_s=0", "reward.timeout_s"), ("vision.sample_max_frames=0", "vision.sample_max_frames"),
]


@pytest.mark.parametrize("override,key", OUT_OF_RANGE)
def test_out_of_range_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: .*(out of range|finite)"):
        load_config(TrainConfig, None, [override])


def test_eval_every_needs_eval_data():
    with pytest.raises(ConfigError, match="eval.every=5 needs held-out data: set data.eval"):
        load_config(TrainConfig, None, ["eval.every=5"])
    assert load_config(TrainConfig, None, ["eval.every=5", "data.eval=[x.jsonl]"]).eval.every == 5


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-5\n  lr: 1.0\nmax_steps: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: duplicate key 'lr' \(line 3\)"):
        load_config(TrainConfig, path)


def test_sft_ranges_are_checked_too():
    with pytest.raises(ConfigError, match="^batch_size: 0 is out of range"):
        load_config(SFTConfig, None, ["batch_size=0"])


def test_a_section_starts_from_its_fields_default():
    """Setting one key of a section keeps that section's other defaults *as the parent declares
    them*: SFT's optimizer lr 1e-4 and RL's LoRA dropout 0 survive `optim.grad_accum=2` / `lora.r=8`."""
    assert load_config(SFTConfig, None, ["optim.grad_accum=2"]).optim.lr == SFTConfig().optim.lr == 1e-4
    assert load_config(TrainConfig, None, ["lora.r=8"]).lora.dropout == TrainConfig().lora.dropout == 0.0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo", "reg_grpo", "tic_grpo", "t_grpo"])
def test_every_preset_is_selectable_from_yaml(tmp_path, name):
    """A preset named in a YAML file fills exactly the settings it lists, in every section it names."""
    from mmgrpo.config import PRESETS

    path = tmp_path / "c.yaml"
    path.write_text(f"loss:\n  preset: {name}\n")
    cfg = load_config(TrainConfig, path)
    for section, values in PRESETS[name].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (name, section, key)


@pytest.mark.parametrize("overrides, key", [
    (["tools.enabled=true", "generation.backend=vllm"], "generation.backend=vllm"),
    (["tools.enabled=true", "tools.names=[]"], "tools.names"),
    (["tools.credit=gigpo", "loss.objective=gspo", "tools.enabled=true"], "tools.credit=gigpo"),
])
def test_tool_settings_that_cannot_work_together_are_refused(overrides, key):
    """Tool rollouts run in the trainer's multi-turn generator: with the vLLM backend an engine would
    be built and never used; GiGPO needs the token-level objective; tools need tools."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(TrainConfig, None, overrides)
