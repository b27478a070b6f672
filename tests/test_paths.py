"""Paths a person types: a mistyped local model folder says "no such folder" (train and infer), a
checkpoint names its local base by an absolute path (merge from another folder works), and infer
takes a folder of frames for --video as training does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from media import counting_frames, write_image
from mmgrpo.cli import main as cli_main
from mmgrpo.models.loading import LoadError, load_processor, model_location


@pytest.mark.parametrize("typed", ["./tinyy", "../models/tiny", "runs/sft/checkpoint-3", "~/nope", "/no/such/model",
                                   "tiny/"])
def test_local_looking_names_say_no_such_folder(typed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoadError, match=r"no such folder"):
        load_processor(typed)


def test_hub_ids_pass_and_offline_hub_says_no_such_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert model_location("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match=r"model tinyy: no such folder \(and the hub is offline"):
        model_location("tinyy")
    (tmp_path / "here").mkdir()
    assert model_location("here") == str(tmp_path / "here")  # local folders become absolute


def test_train_with_a_mistyped_model_folder_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["train", "model.name_or_path=./modle", "data.train=[x.jsonl]", f"output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "mmgrpo train: model ./modle: no such folder" in err and "Traceback" not in err


def test_infer_takes_a_frame_folder_and_names_a_missing_model(tiny_dir, tmp_path, capsys):
    frames = tmp_path / "frames"
    for i, frame in enumerate(counting_frames(4, 56, 56)):
        write_image(frames / f"{i:03d}.png", frame)
    assert cli_main(["infer", "--model", str(tiny_dir), "--video", str(frames), "--question", "What?",
                     "--max-new-tokens", "2", "--max-pixels", "3136"]) == 0
    capsys.readouterr()
    assert cli_main(["infer", "--model", str(tmp_path / "modle"), "--video", str(frames), "--question", "q"]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_checkpoint_names_its_base_absolutely_and_merges_elsewhere(tiny_dir, tmp_path, monkeypatch):
    from mmgrpo.trainer.loop import train
    from tests.trainer_utils import reward_file, small_task, tiny_train_config

    task = small_task(tmp_path / "task")
    monkeypatch.chdir(tiny_dir.parent)  # the base typed relative to the working directory, as in the README
    cfg = tiny_train_config(Path(tiny_dir.name), task, tmp_path / "run", reward_file(tmp_path), "max_steps=1")
    final = train(cfg)
    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_dir.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli_main(["merge", "--adapter", str(final), "--out", "merged", "--no-verify"]) == 0
    assert (elsewhere / "merged" / "config.json").is_file()
