"""Every verb on a tiny model of every family, in the order a user runs them: check-data with the
family's processor, SFT, RL training (one step, shared and repeat forward), merge (verified in a
fresh process with the family's own class), infer and eval; the merged folder answers the held-out
questions as the adapter checkpoint does. About 11 s per family on the 2-core machine, so all run in
the default suite."""
from __future__ import annotations

import json

import pytest

from mmgrpo.models.families import FAMILIES
from tests.trainer_utils import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


def check_data(base, task, tmp_path) -> list[dict]:
    from mmgrpo.cli import main as cli_main

    report = tmp_path / "check.jsonl"
    assert cli_main(["check-data", str(task.train), "--model", str(base), "--report", str(report)]) == 0
    return [json.loads(line) for line in report.read_text().splitlines()]


def sft_adapter(base, task, out, name):
    from mmgrpo.config import SFTConfig, load_config
    from mmgrpo.trainer.sft import sft

    return sft(load_config(SFTConfig, None, [
        f"model.name_or_path={base}", f"model.family={name}", "model.dtype=fp32", f"data.train=[{task.train}]",
        "vision.nframes=4", "vision.min_frames=2", "vision.max_frames=4", "vision.max_pixels=3136",
        "vision.min_pixels=784", f"output_dir={out}", "batch_size=4", "max_steps=2", "progress_bar=false",
        "lora.r=4", "lora.alpha=8", "lora.dropout=0.0",
    ]))


def heldout(model, processor, task, vision):
    from mmgrpo.config import EvalConfig
    from mmgrpo.demo.task import SUFFIX
    from mmgrpo.eval.bench import load_eval_data
    from mmgrpo.eval.runner import evaluate

    samples = load_eval_data([str(task.heldout)], prompt_suffix=SUFFIX, strict=True)
    result = evaluate(model, processor, samples, EvalConfig(batch_size=4, max_new_tokens=6), vision, progress=False,
                      numeric_tolerance=1e-2)
    return [r.raw_outputs for r in result.records]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_verb(family_dir, task, rewards, tmp_path, capsys, name):
    from mmgrpo.eval.cli import main as eval_main
    from mmgrpo.models.export import inspect_checkpoint, load_checkpoint, merge_main
    from mmgrpo.models.infer import infer_main
    from mmgrpo.models.loading import load_model, load_processor
    from mmgrpo.trainer.loop import train

    family, base = FAMILIES[name], family_dir(name)
    records = check_data(base, task, tmp_path)
    assert records and all(r["ok"] and r["text"] + r["video"] == r["total"] for r in records)
    assert all(h % family.grid.factor == 0 and w % family.grid.factor == 0 for r in records for h, w in r["resolution"])
    sft_ckpt = sft_adapter(base, task, tmp_path / "sft", name)
    assert (sft_ckpt / "adapter_model.safetensors").is_file()
    runs = {}
    for mode in ("shared", "repeat"):
        cfg = tiny_train_config(base, task, tmp_path / mode, rewards, f"forward_mode={mode}", f"model.family={name}",
                                "max_steps=1", "save_every=1")
        runs[mode] = train(cfg)
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 1 and rows[-1]["loss"] is not None
    merged = tmp_path / "merged"
    assert merge_main(["--adapter", str(runs["shared"]), "--out", str(merged)]) == 0
    out = capsys.readouterr().out
    assert f"({family.model_class})" in out and "OK:" in out
    video = json.loads(task.heldout.read_text().splitlines()[0])["video"]
    assert infer_main(["--model", str(merged), "--video", str(task.heldout.parent / video), "--question", "Colour?",
                       "--max-new-tokens", "4", "--max-pixels", "3136", "--max-frames", "4"]) == 0
    assert eval_main(["--model", str(merged), "--data", str(task.heldout), "--out", str(tmp_path / "eval"),
                      "--max-new-tokens", "4", "--max-pixels", "3136", "--max-frames", "4", "--no-progress"]) == 0
    vision = cfg.vision
    loaded = load_checkpoint(inspect_checkpoint(runs["shared"]), None, "fp32", "cpu")
    assert heldout(loaded.model, loaded.processor, task, vision) == heldout(
        load_model(merged, "fp32", "cpu").eval(), load_processor(str(merged)), task, vision)
