"""Exact resume after a real crash, and checkpoints that survive a kill during the write."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer.checkpoint import TrainerState, latest_checkpoint, load_trainer_state, resolve_resume
from mmgrpo.trainer.loop import train
from tests.trainer_utils import reward_file, tiny_train_config, weights


def _cli_args(cfg_overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "mmgrpo.cli", "train", *cfg_overrides]


@pytest.mark.parametrize("lora", [False, True])
def test_killed_run_resumes_to_identical_weights(tiny_dir, task, tmp_path, lora):
    rewards = reward_file(tmp_path)
    common = [f"lora.enabled={lora}", "max_steps=4", "save_every=2", "optim.schedule=cosine", "optim.warmup_steps=1",
              "sample_every=1", "report_to=[jsonl,tensorboard]"]
    full = train(tiny_train_config(tiny_dir, task, tmp_path / "full", rewards, *common))

    # Same run as a separate process, SIGKILLed by its reward function in the middle of step 4
    # (2 prompts per step = 2 reward calls per step; call 7 is the first of step 4): step 3 was
    # trained and logged after checkpoint-2, and is replayed by the resume.
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "killed", rewards, *common)
    overrides = [f"{k}={v}" for k, v in _flat_overrides(cfg).items()]
    env = {**os.environ, "MMGRPO_TEST_KILL_AT_CALL": "7"}
    proc = subprocess.run(_cli_args(overrides), env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "killed").name == "checkpoint-2"

    resumed = train(tiny_train_config(tiny_dir, task, tmp_path / "killed", rewards, *common, "resume_from=auto"))
    assert load_trainer_state(resumed).step == 4
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert_same_logs(tmp_path / "full", tmp_path / "killed")


def assert_same_logs(full, resumed) -> None:
    """The resumed run's logs hold each step once (the replayed step's records were cut back), as
    the uninterrupted run's do: metrics.jsonl, samples.jsonl and TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    read = lambda path: [json.loads(x) for x in path.read_text().splitlines()]  # noqa: E731
    a, b = read(full / "metrics.jsonl"), read(resumed / "metrics.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a] == [1, 2, 3, 4]
    assert [(r["loss"], r["reward/mean"]) for r in b] == [(r["loss"], r["reward/mean"]) for r in a]
    assert read(resumed / "samples.jsonl") == read(full / "samples.jsonl")
    events = EventAccumulator(str(resumed / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def _flat_overrides(cfg) -> dict[str, str]:
    """The config as CLI overrides (only the fields the tests set)."""
    return {
        "model.name_or_path": cfg.model.name_or_path, "model.dtype": cfg.model.dtype,
        "data.train": "[" + ",".join(cfg.data.train) + "]", "data.prompt_suffix": repr(cfg.data.prompt_suffix),
        "vision.nframes": cfg.vision.nframes, "vision.min_frames": cfg.vision.min_frames,
        "vision.max_frames": cfg.vision.max_frames, "vision.max_pixels": cfg.vision.max_pixels,
        "vision.min_pixels": cfg.vision.min_pixels, "vision.max_prompt_length": cfg.vision.max_prompt_length,
        "generation.num_generations": cfg.generation.num_generations,
        "generation.max_new_tokens": cfg.generation.max_new_tokens,
        "reward.functions": "[" + ",".join(cfg.reward.functions) + "]", "reward.weights": "[1.0]",
        "prompts_per_step": cfg.prompts_per_step, "max_steps": cfg.max_steps, "save_every": cfg.save_every,
        "output_dir": cfg.output_dir, "progress_bar": "false", "report_to": "[" + ",".join(cfg.report_to) + "]",
        "sample_every": cfg.sample_every, "optim.lr": cfg.optim.lr,
        "optim.schedule": cfg.optim.schedule, "optim.warmup_steps": cfg.optim.warmup_steps,
        "lora.enabled": cfg.lora.enabled, "lora.r": cfg.lora.r, "lora.alpha": cfg.lora.alpha,
        "lora.dropout": cfg.lora.dropout,
    }


KILL_DURING_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    from mmgrpo.trainer import checkpoint as ckpt
    from mmgrpo.models.tiny import build_tiny, TinySpec

    out = sys.argv[1]
    model, processor = build_tiny(TinySpec(layers=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt.save_checkpoint(out, ckpt.TrainerState(step=1), model, processor, opt)
    real_save = torch.save
    def slow_save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        print("WRITING", flush=True)
        time.sleep(60)  # killed here: weights written, optimizer written, state file not yet
    torch.save = slow_save
    ckpt.save_checkpoint(out, ckpt.TrainerState(step=2), model, processor, opt)
    """
)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.stdout.readline().startswith("WRITING"):
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (out / ".checkpoint-2.tmp").is_dir()  # the interrupted write
    assert not (out / "checkpoint-2").exists()
    last = latest_checkpoint(out)
    assert last is not None and last.name == "checkpoint-1"
    # and it is loadable: weights, optimizer state (weights_only), trainer state
    from transformers import Qwen2_5_VLForConditionalGeneration

    Qwen2_5_VLForConditionalGeneration.from_pretrained(last)
    torch.load(last / "optimizer.pt", weights_only=True)
    assert load_trainer_state(last).step == 1


# Every filesystem operation of a save (a rename, each unlink and rmdir of a removal, mkdir, fsync)
# is a point where a kill can land. For each point N a forked child copies the on-disk state, then
# saves with a SIGKILL just before its N-th operation; the loop ends when a save completes.
KILL_AT_EACH_POINT = textwrap.dedent(
    """
    import json, os, shutil, signal, sys, torch
    torch.set_num_threads(1)  # forked children: no intra-op thread pool to inherit
    from mmgrpo.trainer import checkpoint as ckpt
    from mmgrpo.models.tiny import build_tiny, TinySpec

    root = sys.argv[1]
    model, processor = build_tiny(TinySpec(layers=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    SCENARIOS = {"new-step": (1, 2), "same-step-again": (2, 2)}  # (step on disk, step saved), save_total_limit=1

    def kill_before_operation(n):
        count = [0]
        for name in ("rename", "replace", "unlink", "rmdir", "mkdir", "fsync"):
            def hooked(*args, _real=getattr(os, name), **kwargs):
                count[0] += 1
                if count[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _real(*args, **kwargs)
            setattr(os, name, hooked)

    runs = {}
    for scenario, (before, step) in SCENARIOS.items():
        template = os.path.join(root, scenario)
        ckpt.save_checkpoint(template, ckpt.TrainerState(step=before), model, processor, opt, total_limit=1)
        runs[scenario] = []
        while True:
            out = f"{template}-{len(runs[scenario]) + 1}"
            shutil.copytree(template, out)
            runs[scenario].append(out)
            pid = os.fork()
            if pid == 0:
                kill_before_operation(len(runs[scenario]))
                ckpt.save_checkpoint(out, ckpt.TrainerState(step=step), model, processor, opt, total_limit=1)
                os._exit(0)
            if os.WIFEXITED(os.waitpid(pid, 0)[1]):
                break  # past the last operation: this save completed
    print(json.dumps(runs))
    """
)


def test_a_kill_at_any_point_of_a_save_leaves_a_checkpoint_resume_picks_up(tmp_path):
    """save_total_limit=1, saving a new step (the older one is pruned) and re-saving the step on disk
    (the old copy is moved aside): whatever the kill point, a complete checkpoint is resumed from,
    and never an older one than at an earlier kill point."""
    proc = subprocess.run([sys.executable, "-c", KILL_AT_EACH_POINT, str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.splitlines()[-1])
    for scenario, outs in runs.items():
        assert len(outs) > 5, (scenario, outs)  # the hooks saw the save's operations
        steps = []
        for out in outs:
            ckpt.recover(out)
            last = resolve_resume("auto", out)
            assert last is not None, f"{scenario}: nothing to resume after a kill in {out}"
            assert load_file(str(last / "model.safetensors")) and (last / "config.json").is_file(), out
            torch.load(last / "optimizer.pt", weights_only=True)
            steps.append(load_trainer_state(last).step)
        assert steps == sorted(steps) and steps[-1] == 2, (scenario, steps)
        assert sorted(p.name for p in Path(outs[-1]).iterdir()) == ["checkpoint-2"]  # nothing left behind


def test_resume_auto_recovers_a_resave_killed_between_its_renames(tiny_dir, task, tmp_path):
    """The state a kill between the two renames of a re-save leaves with save_total_limit=1: the old
    copy moved aside, the new one complete but not yet in place, no visible checkpoint."""
    from mmgrpo.trainer.setup import setup

    rewards, out = reward_file(tmp_path), tmp_path / "run"
    common = ["save_every=2", "save_total_limit=1"]
    train(tiny_train_config(tiny_dir, task, out, rewards, "max_steps=2", *common))
    (out / "checkpoint-2").rename(out / ".checkpoint-2.old")
    shutil.copytree(out / ".checkpoint-2.old", out / ".checkpoint-2.tmp")
    run = setup(tiny_train_config(tiny_dir, task, out, rewards, "max_steps=3", *common, "resume_from=auto"))
    assert run.state.step == 2
    final = train(run.cfg, run)
    assert load_trainer_state(final).step == 3
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_checkpoint_data_that_cannot_be_resumed_is_never_silently_restarted(tmp_path):
    from dataclasses import asdict

    from mmgrpo.config import TrainConfig, load_config
    from mmgrpo.trainer.setup import check_start

    lost = tmp_path / "lost-state"
    (lost / "checkpoint-3").mkdir(parents=True)
    (lost / "checkpoint-3" / "model.safetensors").write_bytes(b"weights")  # trainer_state.json deleted
    with pytest.raises(ValueError, match=r"checkpoint-3 \(no trainer_state.json\)"):
        resolve_resume("auto", lost)
    half = tmp_path / "half-removed-old"
    (half / ".checkpoint-2.old").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"\.checkpoint-2\.old"):
        resolve_resume("auto", half)
    # a complete save whose final rename never happened is a checkpoint: a fresh start is refused
    pending = tmp_path / "pending"
    (pending / ".checkpoint-2.tmp").mkdir(parents=True)
    (pending / ".checkpoint-2.tmp" / "trainer_state.json").write_text(json.dumps(asdict(TrainerState(step=2))))
    with pytest.raises(ValueError, match=r"already holds \.checkpoint-2\.tmp.*resume_from=auto"):
        check_start(load_config(TrainConfig, None, [f"output_dir={pending}"]), None)


def test_lora_resume_from_full_init_keeps_its_base(tiny_dir, task, tmp_path):
    """LoRA RL started from a full-weights checkpoint (e.g. a full SFT) resumes onto that checkpoint,
    not onto model.name_or_path (PEFT records the base in adapter_config.json)."""
    from mmgrpo.models.tiny import TinySpec, save_tiny
    from mmgrpo.trainer.setup import check_start

    rewards = reward_file(tmp_path)
    other = save_tiny(tmp_path / "other-init", TinySpec(seed=7))  # stands in for a full SFT checkpoint
    common = ["lora.enabled=true", "max_steps=2", "save_every=1"]
    full = train(tiny_train_config(tiny_dir, task, tmp_path / "a", rewards, *common, f"init_from={other}"))
    # the README's flow: the first command with resume_from=auto (nothing to resume: a fresh start
    # from init_from), then the same command again with more steps
    train(tiny_train_config(tiny_dir, task, tmp_path / "b", rewards, "lora.enabled=true", "max_steps=1",
                            "save_every=1", f"init_from={other}", "resume_from=auto"))
    same = tiny_train_config(tiny_dir, task, tmp_path / "b", rewards, *common, f"init_from={other}", "resume_from=auto")
    with pytest.raises(ValueError, match=r"init_from=.*model in the config, but the run started from .*other-init"):
        check_start(dataclasses.replace(same, init_from=str(tiny_dir)), ckpt.resolve_resume("auto", same.output_dir))
    resumed = train(same)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_refused_without_cuda(tiny_dir, task, tmp_path):
    from mmgrpo.trainer.setup import setup

    with pytest.raises(ValueError, match="fp16"):
        setup(tiny_train_config(tiny_dir, task, tmp_path / "r", reward_file(tmp_path), "model.dtype=fp16"))
