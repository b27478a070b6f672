"""SFT warm-up: loss on the assistant's answer only, a checkpoint `mmgrpo train` starts from."""
from __future__ import annotations

import json

import pytest
import torch

from mmgrpo.config import SFTConfig, load_config
from mmgrpo.demo.task import SUFFIX
from mmgrpo.models.loading import load_processor
from mmgrpo.processors.formats import load_samples
from mmgrpo.trainer.checkpoint import load_trainer_state
from mmgrpo.trainer.loop import train
from mmgrpo.trainer.sft import sft, target_ids
from tests.trainer_utils import reward_file, small_task, tiny_train_config, weights


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return small_task(tmp_path_factory.mktemp("task"))


def sft_cfg(tiny_dir, task, out, *extra) -> SFTConfig:
    return load_config(SFTConfig, None, [
        f"model.name_or_path={tiny_dir}", "model.dtype=fp32", f"data.train=[{task.train}]",
        "vision.nframes=4", "vision.min_frames=2", "vision.max_frames=4", "vision.max_pixels=3136",
        "vision.min_pixels=784", f"output_dir={out}", "batch_size=4", "progress_bar=false", "log_every=1",
        "optim.lr=1e-3", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0", *extra,
    ])


def test_targets_are_the_assistant_turn_only(tiny_dir, task):
    processor = load_processor(str(tiny_dir))
    sample = load_samples(str(task.train)).samples[0]
    ids = target_ids(processor, sample, "<answer>{answer}</answer>")
    assert processor.tokenizer.decode(ids[0]) == f"<answer>{sample.answer}</answer><|im_end|>"


def test_target_template_names_a_column(tiny_dir, task):
    """A reasoning-trace warm-up: the template names a column of the row; a column the row lacks
    is an error naming the sample, not a KeyError from deep inside str.format."""
    import dataclasses

    processor = load_processor(str(tiny_dir))
    sample = load_samples(str(task.train)).samples[0]
    traced = dataclasses.replace(sample, columns={**sample.columns, "trace": "<think>red 2</think>"})
    ids = target_ids(processor, traced, "{trace}<answer>{answer}</answer>")
    assert processor.tokenizer.decode(ids[0]) == f"<think>red 2</think><answer>{sample.answer}</answer><|im_end|>"
    with pytest.raises(ValueError, match="names 'trace'"):
        target_ids(processor, sample, "{trace}")


@pytest.mark.parametrize("lora", [False, True])
def test_sft_then_rl(tiny_dir, task, tmp_path, lora):
    ckpt = sft(sft_cfg(tiny_dir, task, tmp_path / "sft", f"lora.enabled={lora}", "max_steps=6"))
    assert load_trainer_state(ckpt).kind == "sft" and load_trainer_state(ckpt).step == 6
    losses = [json.loads(line)["sft/loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]  # it learns the answer format
    for name in ("preprocessor_config.json", "chat_template.jinja", "optimizer.pt"):
        assert (ckpt / name).is_file()
    # RL starts from the SFT weights: with lr 0 the RL checkpoint equals the SFT one
    rl = train(tiny_train_config(tiny_dir, task, tmp_path / "rl", reward_file(tmp_path), f"lora.enabled={lora}",
                                 f"init_from={ckpt}", "optim.lr=0.0", "max_steps=1",
                                 f"data.prompt_suffix={SUFFIX!r}".replace("\n", " ")))
    a, b = weights(ckpt), weights(rl)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_into_a_folder_holding_a_run_is_refused(tiny_dir, task, tmp_path):
    """SFT does not resume: a second `mmgrpo sft` (or one into an RL run's folder) would mix two runs'
    checkpoints and metrics."""
    sft(sft_cfg(tiny_dir, task, tmp_path / "sft", "max_steps=1"))
    with pytest.raises(ValueError, match=r"output_dir .*sft already holds checkpoint-1.*new output_dir"):
        sft(sft_cfg(tiny_dir, task, tmp_path / "sft", "max_steps=1"))
    train(tiny_train_config(tiny_dir, task, tmp_path / "rl", reward_file(tmp_path), "max_steps=1"))
    with pytest.raises(ValueError, match=r"output_dir .*rl already holds checkpoint-1"):
        sft(sft_cfg(tiny_dir, task, tmp_path / "rl", "max_steps=1"))
