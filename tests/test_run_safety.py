"""No fault silently loses work: one run per output_dir (a lock), a full disk during a save or a
metrics write, logs that match the checkpoint a run resumed from."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmgrpo.config import to_dict
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer.logger import MetricsLogger
from mmgrpo.trainer.loop import train
from tests.test_sft import sft_cfg
from tests.trainer_utils import reward_file, tiny_train_config

# Held busy by its reward function: the call numbered MMGRPO_TEST_BLOCK_AT_CALL writes the process id
# into MMGRPO_TEST_BUSY_FILE and sleeps until the test kills the process.
BUSY_REWARD = '''
import os, time

CALLS = {"n": 0}

def busy_reward(completions, **columns):
    CALLS["n"] += 1
    if CALLS["n"] == int(os.environ.get("MMGRPO_TEST_BLOCK_AT_CALL", "0")):
        with open(os.environ["MMGRPO_TEST_BUSY_FILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
    return [float(len(c[0]["content"])) / 10.0 for c in completions]
'''


@pytest.fixture
def busy_reward(tmp_path) -> Path:
    path = tmp_path / "busy_reward.py"
    path.write_text(textwrap.dedent(BUSY_REWARD))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmgrpo.cli", *args]


def write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def wait_until_busy(proc: subprocess.Popen, busy: Path, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while not busy.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the first run never got busy (rc {proc.poll()}):\n{proc.stderr.read()[-4000:]}")
        time.sleep(0.2)


def test_second_run_on_a_busy_output_dir_is_refused_and_resume_works_after_a_kill(tiny_dir, task, tmp_path,
                                                                                 busy_reward):
    """Two real processes on one output_dir: the second (train or sft) is refused naming the first's
    pid; once the first is SIGKILLed (the kernel drops its lock) the run resumes."""
    from mmgrpo.trainer.sft import sft

    out = tmp_path / "run"
    cfg = tiny_train_config(tiny_dir, task, out, busy_reward, f"reward.functions=[{busy_reward}:busy_reward]",
                            "max_steps=3", "save_every=1")
    config = write_config(cfg, tmp_path / "train.yaml")
    busy = tmp_path / "busy"
    # call 3 = the first reward call of step 2: checkpoint-1 is on disk
    env = {**os.environ, "MMGRPO_TEST_BLOCK_AT_CALL": "3", "MMGRPO_TEST_BUSY_FILE": str(busy)}
    first = subprocess.Popen(cli("train", str(config)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_until_busy(first, busy)
        second = subprocess.run(cli("train", str(config), "resume_from=auto"), capture_output=True, text=True,
                                timeout=300)
        assert second.returncode != 0, "the second run was not refused"
        assert f"in use by pid {first.pid}" in second.stderr, second.stderr[-3000:]
        with pytest.raises(RuntimeError, match=f"in use by pid {first.pid}"):
            sft(sft_cfg(tiny_dir, task, out, "max_steps=1"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert ckpt.latest_checkpoint(out).name == "checkpoint-1"
    import dataclasses

    final = train(dataclasses.replace(cfg, resume_from="auto"))
    assert ckpt.load_trainer_state(final).step == 3


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from mmgrpo.trainer.runlock import RunLock

    lock = RunLock.acquire(sys.argv[1], "a test holding the folder")
    print("HELD", flush=True)
    time.sleep(600)
    """
)


def test_busy_output_dir_refuses_a_two_process_launch_on_every_process(tiny_dir, task, tmp_path):
    """Only the main process takes the lock; its refusal reaches every process (none hangs in a
    collective waiting for it). Without a holder, test_distributed's runs show no process is refused."""
    from tests.test_distributed import launch

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().startswith("HELD")
        cfg = tiny_train_config(tiny_dir, task, out, reward_file(tmp_path), "prompts_per_step=2")
        result = launch(2, cfg)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode != 0
    assert result.stdout.count(f"in use by pid {holder.pid}") >= 2, result.stdout[-6000:]  # both ranks say why
    assert not (out / "metrics.jsonl").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------
# disk full during a save

FILL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from mmgrpo.trainer import checkpoint as ckpt
    from mmgrpo.models.tiny import build_tiny, TinySpec

    out, stage = sys.argv[1], sys.argv[2]
    model, processor = build_tiny(TinySpec(layers=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()  # Adam moments: optimizer.pt is about twice the weights
    first = ckpt.save_checkpoint(out, ckpt.TrainerState(step=1), model, processor, opt)
    weights = (first / "model.safetensors").stat().st_size
    limit = weights // 2 if stage == "weights" else weights * 3 // 2
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        ckpt.save_checkpoint(out, ckpt.TrainerState(step=2), model, processor, opt)
    except OSError as e:
        print("ERROR", e, flush=True)
        sys.exit(3)
    """
)


def assert_previous_checkpoint_intact(out: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    assert not (out / ".checkpoint-2.tmp").exists() and not (out / "checkpoint-2").exists()
    last = ckpt.latest_checkpoint(out)
    assert last is not None and last.name == "checkpoint-1"
    Qwen2_5_VLForConditionalGeneration.from_pretrained(last)
    torch.load(last / "optimizer.pt", weights_only=True)
    assert ckpt.load_trainer_state(last).step == 1


@pytest.mark.parametrize("stage, file", [("weights", "model.safetensors"), ("optimizer", "optimizer.pt")])
def test_file_size_limit_during_a_save_is_named_and_cleaned_up(tmp_path, stage, file):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", FILL_DISK, str(out), stage], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    message = proc.stdout
    assert "file-size limit" in message and file in message and ".checkpoint-2.tmp" in message, message
    assert "checkpoint-1 is intact" in message, message
    assert_previous_checkpoint_intact(out)


def test_disk_full_during_the_optimizer_write_is_named_and_cleaned_up(tmp_path, monkeypatch):
    from mmgrpo.models.tiny import TinySpec, build_tiny

    out = tmp_path / "run"
    model, processor = build_tiny(TinySpec(layers=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt.save_checkpoint(out, ckpt.TrainerState(step=1), model, processor, opt)

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"disk is full .* optimizer\.pt .*\.checkpoint-2\.tmp.*checkpoint-1 is intact") as e:
        ckpt.save_checkpoint(out, ckpt.TrainerState(step=2), model, processor, opt)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert_previous_checkpoint_intact(out)


# ------------------------------------------------------------------------------------------------
# metrics.jsonl / samples.jsonl


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_logs_are_cut_back_to_the_resumed_step_and_a_partial_line_is_dropped(tmp_path):
    record = lambda step: json.dumps({"step": step, "loss": 0.5}) + "\n"  # noqa: E731
    (tmp_path / "metrics.jsonl").write_text("".join(record(s) for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    (tmp_path / "samples.jsonl").write_text("".join(record(s) for s in (1, 1, 2, 2, 3, 3)))
    logger = MetricsLogger(tmp_path, ["jsonl"], {}, start_step=2)  # resumed from checkpoint-2
    logger.log(3, {"loss": 0.25})
    logger.close()
    assert lines(tmp_path / "metrics.jsonl") == [record(1), record(2), json.dumps({"step": 3, "loss": 0.25}) + "\n"]
    assert lines(tmp_path / "samples.jsonl") == [record(1), record(1), record(2), record(2)]


def test_resumed_tensorboard_file_sorts_after_the_killed_runs_file(tmp_path):
    """TensorBoard reads event files in name order (creation second, host, pid): a resume within the
    same second as the killed run once wrote a file that sorted first, and the killed run's older
    steps then undid the resume's purge (CI: TensorBoard showed steps 1-3 of 4)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLogger(tmp_path, ["tensorboard"], {})
    for step in (1, 2, 3):
        first.log(step, {"loss": float(step)})
    first.close()
    old = next((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # the killed run's file, renamed as if written this second on a host and pid that sort last
    old.rename(old.with_name(f"events.out.tfevents.{int(time.time()):010d}.zzzz.99999999.0"))
    resumed = MetricsLogger(tmp_path, ["tensorboard"], {}, start_step=2)
    for step in (3, 4):
        resumed.log(step, {"loss": 10.0 * step})
    resumed.close()
    names = sorted(p.name for p in (tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "99999999" in names[0], names
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_failed_metrics_write_is_rolled_back_to_the_last_complete_line(tmp_path, monkeypatch):
    logger = MetricsLogger(tmp_path, ["jsonl"], {})
    logger.log(1, {"loss": 1.0})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])  # the disk fills up in the middle of the record
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="metrics.jsonl"):
        logger.log(2, {"loss": 2.0})
    monkeypatch.undo()
    assert lines(tmp_path / "metrics.jsonl") == [json.dumps({"step": 1, "loss": 1.0}) + "\n"]
    logger.log(2, {"loss": 2.0})  # space was freed: logging goes on from a clean line
    logger.close()
    assert [json.loads(x)["step"] for x in lines(tmp_path / "metrics.jsonl")] == [1, 2]
