"""What a person reads: --help of every verb without torch, train --help pointing at the config
reference, the start-up summary, held-out results and steps that train on nothing printed, SFT from
a training config with a progress bar and TensorBoard, eval failing when nothing was scored."""
from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mmgrpo.cli import COMMANDS
from mmgrpo.cli import main as cli_main
from mmgrpo.config import Family
from mmgrpo.parsers import FAMILY_NAMES

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_help_answers_without_importing_torch(verb):
    code = (f"import sys; from mmgrpo.cli import main; rc = main([{verb!r}, '--help']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: mmgrpo" in done.stdout


def test_help_families_are_the_supported_ones():
    from mmgrpo.models.families import FAMILIES

    assert FAMILY_NAMES == sorted(FAMILIES) == sorted(typing.get_args(Family))


def test_train_help_lists_sections_and_the_reference(capsys):
    assert cli_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Config sections: model, lora, vision, data, generation, reward" in out and "docs/config.md" in out


def flat_reward(tmp_path: Path) -> Path:
    path = tmp_path / "flat.py"
    path.write_text("def flat(completions, **kw):\n    return [1.0] * len(completions)\n")
    return path


def test_startup_summary_heldout_and_flat_steps_are_printed(tiny_dir, tmp_path, capsys):
    from mmgrpo.trainer.loop import train
    from tests.trainer_utils import reward_file, small_task, tiny_train_config

    task = small_task(tmp_path / "task")
    flat = flat_reward(tmp_path)
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", reward_file(tmp_path), f"reward.functions=[{flat}:flat]",
                            f"data.eval=[{task.heldout}]", "eval.every=1", "eval.max_new_tokens=4", "max_steps=1",
                            "progress_bar=true")
    train(cfg)
    captured = capsys.readouterr()
    out = captured.out
    # the bar shows the figures that move (a Reg-GRPO loss sits near 1 by construction)
    assert "reward=1.000" in captured.err and "flat=1.00" in captured.err and "loss=" in captured.err
    assert "[mmgrpo train] 8 training samples, 4 held-out" in out
    assert f"model      {tiny_dir}, starting from the base model's weights" in out
    assert "training   LoRA r=4, alpha=8:" in out and "trainable of" in out
    assert "processes  1 (cpu)" in out and f"output     {tmp_path / 'run'}" in out
    assert "[mmgrpo] step 1 held-out: accuracy 0.000" in out
    assert "WARNING step 1: every group's completions got equal rewards" in out


def test_sft_reads_a_training_config(tiny_dir, tmp_path, capsys, monkeypatch):
    """The README's `mmgrpo sft configs/qwen2_5_vl_3b_video.yaml data.train=[...]` (the training
    config's model, LoRA, vision and data sections; its RL sections left out)."""
    from tests.trainer_utils import small_task

    task = small_task(tmp_path / "task")
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["sft", str(ROOT / "configs" / "qwen2_5_vl_3b_video.yaml"), f"model.name_or_path={tiny_dir}",
                   "model.dtype=fp32", "model.gradient_checkpointing=false", f"data.train=[{task.train}]",
                   "max_steps=2", "batch_size=2", "vision.max_pixels=3136", "vision.max_frames=4", "lora.r=4"])
    assert rc == 0
    captured = capsys.readouterr()
    out_dir = tmp_path / "runs" / "qwen2_5_vl_3b_reg_grpo-sft"
    assert "is a training config: SFT takes its model, lora, vision, data" in captured.err
    assert "[mmgrpo sft] 8 training samples" in captured.out and "LoRA r=4, alpha=128" in captured.out
    assert (out_dir / "checkpoint-2").is_dir() and list((out_dir / "tensorboard").iterdir())
    assert "loss=" in captured.err  # the progress bar shows the loss


def test_eval_fails_when_no_sample_could_be_scored(tiny_dir, tmp_path, capsys):
    data = tmp_path / "b.jsonl"
    data.write_text(json.dumps({"id": "x", "question": "q?", "answer": "a", "video": "gone.mp4"}) + "\n")
    rc = cli_main(["eval", "--model", str(tiny_dir), "--data", str(data), "--out", str(tmp_path / "ev"), "--no-progress"])
    assert rc == 1
    assert "no sample could be scored" in capsys.readouterr().err


def test_no_deprecation_warnings_when_a_run_builds_its_policy(tiny_dir):
    """Gradient checkpointing and PEFT's wrap warned with a FutureWarning on every run."""
    import warnings

    from mmgrpo.config import LoraConfig, ModelConfig
    from mmgrpo.trainer.setup import build_policy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_policy(ModelConfig(name_or_path=str(tiny_dir), dtype="fp32", gradient_checkpointing=True),
                     LoraConfig(r=2, alpha=4), None, "cpu")
    noise = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not noise, [str(w.message) for w in noise]


def test_check_data_names_each_bad_row_once(tmp_path, capsys, caplog):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "lost", "question": "q?", "answer": "a", "video": "lost-video.mp4"}) + "\n")
    assert cli_main(["check-data", str(data)]) == 1
    captured = capsys.readouterr()
    assert (captured.out + captured.err + caplog.text).count("lost-video.mp4") == 1  # logged rows included
