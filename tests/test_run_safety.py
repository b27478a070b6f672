"""No fault silently loses work: a full disk during a save."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmgrpo.trainer import checkpoint as ckpt

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
