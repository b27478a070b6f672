"""Checkpoints: `output_dir/checkpoint-STEP/`, written atomically, resumed exactly.

Layout: adapter (PEFT `adapter_model.safetensors` + `adapter_config.json`) or full weights
(`model.safetensors` + `config.json`); processor files; `generation_config.json`; `optimizer.pt`
(tensors only, loaded with `weights_only=True`); `trainer_state.json` (step, data position, LR
scheduler, augmentation scheduler, counters; the RNG state is a function of seed and step, see
`step_seed`). Nothing is unpickled.

Atomicity: everything is written into a hidden temporary folder that is renamed into place last; a
process killed mid-write leaves only the temporary folder, which `latest_checkpoint` ignores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmgrpo.models.loading import save_processor_files

STATE_FILE = "trainer_state.json"  # written last inside the temporary folder
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    """Everything besides weights and optimizer tensors that an exact resume needs (JSON only)."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # next index into this epoch's sample order
    lr_scheduler: dict = field(default_factory=dict)
    augment: dict | None = None  # DifficultyScheduler.state_dict()
    counters: dict[str, int] = field(default_factory=dict)  # skipped samples, reward errors, ...
    config: dict = field(default_factory=dict)
    kind: str = "grpo"  # "grpo" | "sft": which command wrote it
    grad_scaler: dict | None = None  # fp16 loss scale and growth tracker (plain numbers)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest complete checkpoint (temporary folders from an interrupted save are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _CKPT_RE.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    if resume_from is None:
        return None
    if resume_from == "auto":
        return latest_checkpoint(output_dir)  # None = fresh start
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume_from={resume_from}: no {STATE_FILE} there (not a complete checkpoint)")
    return path


def save_weights(model: torch.nn.Module, processor: Any, out: Path, state_dict: dict | None = None) -> None:
    """Adapter or full weights in safetensors, plus processor and generation config. `state_dict`:
    the full weights when the model's own are sharded (FSDP / ZeRO-3: `Accelerator.get_state_dict`)."""
    model.save_pretrained(out, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    save_processor_files(processor, out)


def step_seed(seed: int, step: int, stream: int) -> int:
    """The RNG state of a run is a pure function of (seed, step, stream): each group's rollout is
    seeded with its index in the step's global batch as the stream, and torch's global RNG (dropout)
    with the process. A checkpoint then needs only the step (in trainer_state.json) to restore the
    RNG exactly, and a group samples the same completions whichever process generates it."""
    return (seed * 1_000_003 + step * 1_009 + stream * 7_919) % (2**63 - 1)


def save_checkpoint(
    output_dir: str | Path,
    state: TrainerState,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer | None,
    total_limit: int | None = None,
    state_dict: dict | None = None,
) -> Path:
    final = checkpoint_dir(output_dir, state.step)
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # leftover of an earlier interrupted save
    tmp.mkdir(parents=True)
    save_weights(model, processor, tmp, state_dict)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    _write_json(tmp / STATE_FILE, asdict(state))  # last: marks the folder complete
    if final.exists():  # re-saving the same step: move the old one aside before the swap
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)
    if total_limit:
        _prune(Path(output_dir), total_limit)
    return final


def load_trainer_state(ckpt: Path) -> TrainerState:
    return TrainerState(**json.loads((ckpt / STATE_FILE).read_text()))


def load_optimizer_state(ckpt: Path, optimizer: torch.optim.Optimizer) -> None:
    path = ckpt / "optimizer.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt}: optimizer.pt missing; cannot resume exactly")
    optimizer.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


def is_adapter_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, keep: int) -> None:
    ckpts = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name)))
    for _, p in ckpts[:-keep]:
        shutil.rmtree(p)
