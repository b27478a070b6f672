"""Checkpoints: `output_dir/checkpoint-STEP/`, written atomically, resumed exactly.

Layout: adapter (PEFT `adapter_model.safetensors` + `adapter_config.json`) or full weights
(`model.safetensors` + `config.json`); processor files; `generation_config.json`; `optimizer.pt`
(tensors only, loaded with `weights_only=True`); `trainer_state.json` (step, data position, LR
scheduler, augmentation scheduler, counters; the RNG state is a function of seed and step, see
`step_seed`). Nothing is unpickled.

Atomicity: everything is written into a hidden `.checkpoint-N.tmp`, every file fsynced and
`trainer_state.json` last (a folder with it is complete), then renamed into place. Re-saving a step
already on disk first moves the old copy aside to `.checkpoint-N.old` (a folder cannot be renamed
over a non-empty one); pruning renames a checkpoint to `.checkpoint-N.deleting` before removing it.
So at every moment of a save the folder holds a complete checkpoint under its name, or a complete
`.tmp` / `.old` that `recover` puts back; and `resolve_resume` refuses to restart from step 0 over
checkpoint data it cannot use.

Disk full (ENOSPC, EDQUOT) or the file-size limit (EFBIG) while writing raises `DiskFullError`, which
names the cause and the file; the partial `.tmp` is removed and earlier checkpoints are untouched.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from mmgrpo.models.loading import save_processor_files

STATE_FILE = "trainer_state.json"  # written last inside the temporary folder
KINDS = ("grpo", "sft")
# checkpoint-N (visible) or .checkpoint-N.tmp / .old / .deleting (hidden, a save or prune under way)
_ENTRY_RE = re.compile(r"^(\.?)checkpoint-(\d+)(?:\.(tmp|old|deleting))?$")
_KIND_ORDER = {"": 0, "tmp": 1, "old": 2, "deleting": 3}  # recover promotes a .tmp before an .old


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


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space or the file-size limit."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def entries(output_dir: str | Path) -> list[tuple[int, str, Path]]:
    """(step, kind, folder) of every checkpoint folder, by step; kind "" for checkpoint-N, else
    "tmp" | "old" | "deleting"."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _ENTRY_RE.match(p.name)
        if m and p.is_dir() and (m.group(1) == "") == (m.group(3) is None):
            found.append((int(m.group(2)), m.group(3) or "", p))
    return sorted(found, key=lambda e: (e[0], _KIND_ORDER[e[1]]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest complete checkpoint (hidden folders of an interrupted save are ignored)."""
    found = [p for _, kind, p in entries(output_dir) if kind == "" and is_complete(p)]
    return found[-1] if found else None


def describe(kind: str, path: Path) -> str:
    if kind == "":
        return path.name if is_complete(path) else f"{path.name} (no {STATE_FILE})"
    if kind == "tmp":
        return f"{path.name} (a complete save interrupted before its rename)"
    state = "complete" if is_complete(path) else f"incomplete, no {STATE_FILE}"
    return f"{path.name} (the previous copy of a re-saved checkpoint, {state})"


def run_data(output_dir: str | Path) -> list[str]:
    """What in output_dir holds a run's work, newest first: checkpoints, complete or not, and the
    hidden copies a save left. An incomplete `.tmp` (a write cut short) and `.deleting` are not."""
    keep = [(kind, p) for _, kind, p in entries(output_dir)
            if kind not in ("tmp", "deleting") or (kind == "tmp" and is_complete(p))]
    return [describe(kind, p) for kind, p in reversed(keep)]


def listing(items: list[str], most: int = 3) -> str:
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def recover(output_dir: str | Path) -> list[str]:
    """Finish what an interrupted save left. A complete `.tmp` or `.old` whose checkpoint is missing
    is put back under its name (a `.tmp` first: it is the newer copy of the step); hidden copies
    beside a complete checkpoint, incomplete `.tmp` folders and `.deleting` ones are removed. An
    incomplete `.old` with no checkpoint beside it is left for `resolve_resume` to report. Returns
    what was recovered. Run it on one process, holding the run lock."""
    notes = []
    for step, kind, path in entries(output_dir):
        final = checkpoint_dir(output_dir, step)
        if kind == "":
            continue
        if kind == "deleting" or is_complete(final):
            shutil.rmtree(path)
        elif final.exists():
            continue  # an incomplete checkpoint-N we did not write: resolve_resume reports it
        elif is_complete(path):
            path.rename(final)
            notes.append(f"recovered {final.name} from {path.name}, left by a save that was interrupted")
        elif kind == "tmp":
            shutil.rmtree(path)  # a write cut short: never was a checkpoint
    if notes:
        _fsync_dir(Path(output_dir))
    return notes


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from. `auto`: the latest complete one, None when output_dir holds no
    checkpoint data at all; data it cannot use (after `recover`) is an error, never a fresh start."""
    if resume_from is None:
        return None
    if resume_from == "auto":
        last = latest_checkpoint(output_dir)
        after = int(last.name.split("-")[1]) if last is not None else 0
        blocking = [describe(kind, p) for step, kind, p in entries(output_dir)
                    if step > after and (kind in ("", "old") or (kind == "tmp" and is_complete(p)))]
        if blocking:
            start = f"{last.name}, older than it" if last is not None else "no complete checkpoint"
            raise ValueError(f"resume_from=auto: output_dir {output_dir} holds {listing(blocking)}, which cannot be "
                             f"resumed, and {start}: resuming would silently redo that work. Resume from a complete "
                             "checkpoint with resume_from=PATH, or move those folders out of output_dir")
        return last
    path = Path(resume_from)
    if not is_complete(path):
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
    tmp = _hidden(final, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # leftover of an earlier interrupted save
    tmp.mkdir(parents=True)
    weights = "adapter_model.safetensors" if hasattr(model, "peft_config") else "model.safetensors"
    with _writing(tmp, final, f"{weights} and the processor files"):
        save_weights(model, processor, tmp, state_dict)
    if optimizer is not None:
        with _writing(tmp, final, "optimizer.pt"):
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
    with _writing(tmp, final, STATE_FILE):
        _fsync_tree(tmp)  # the data before the mark of completeness: a complete folder is on disk
        _write_json(tmp / STATE_FILE, asdict(state))  # last: marks the folder complete
    _publish(tmp, final)
    if total_limit:
        _prune(Path(output_dir), total_limit)
    return final


def _hidden(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}"


def _publish(tmp: Path, final: Path) -> None:
    """Put the complete `tmp` in place. Re-saving a step on disk moves the old copy aside first: a
    kill between the two renames leaves two complete hidden copies, which `recover` puts back."""
    if final.exists():
        old = _hidden(final, "old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        _fsync_dir(final.parent)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


def _prune(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints, each first renamed out of sight: a kill in the
    middle of a removal never leaves a half-deleted folder under a checkpoint's name."""
    visible = [p for _, kind, p in entries(root) if kind == ""]
    for p in visible[:-keep]:
        doomed = _hidden(p, "deleting")
        if doomed.exists():
            shutil.rmtree(doomed)
        p.rename(doomed)
        shutil.rmtree(doomed)


@contextlib.contextmanager
def _writing(tmp: Path, final: Path, what: str) -> Iterator[None]:
    """Writing `what` into `tmp`: on any failure the partial folder is removed; lack of space or the
    file-size limit becomes a DiskFullError that says so, and where."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = _errno_of(e)
        if not isinstance(e, Exception) or code not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise DiskFullError(code, _space_message(code, what, tmp, final)) from e


def _errno_of(e: BaseException) -> int | None:
    """The OS error behind `e`: an OSError in its chain, or the `os error N` that safetensors'
    Rust writer puts in its message."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno:
            return e.errno
        m = re.search(r"os error (\d+)", str(e))
        if m:
            return int(m.group(1))
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _space_message(code: int, what: str, tmp: Path, final: Path) -> str:
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        cause = f"the file-size limit (RLIMIT_FSIZE, `ulimit -f`: {_bytes(limit)}) was hit"
        advice = "Raise the limit (ulimit -f unlimited)"
    else:
        full = "the disk is full" if code == errno.ENOSPC else "the disk quota is exhausted"
        cause = f"{full} ({_bytes(shutil.disk_usage(tmp.parent).free)} free on the file system of {tmp.parent})"
        advice = "Free some space"
    previous = latest_checkpoint(final.parent)
    kept = f"{previous.name} is intact" if previous is not None else "there is no earlier checkpoint"
    return (f"{final.name} was not saved: {cause} while writing {what} into {tmp}; the partial "
            f"folder was removed and {kept}. {advice}, then resume with resume_from=auto")


def _bytes(n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class _FileWriter:
    """What torch.save writes into, keeping the OSError: torch's zip writer reports a failed write as
    `unexpected pos N vs M`, without the errno that tells a full disk from a bug."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        pass


def _torch_save(obj: Any, path: Path) -> None:
    writer = _FileWriter(path)
    try:
        torch.save(obj, writer)
    except RuntimeError as e:
        if writer.error is not None:
            raise writer.error from e
        raise
    finally:
        os.close(writer.fd)


def load_trainer_state(ckpt: Path) -> TrainerState:
    """trainer_state.json, checked field by field: a resume acts on these numbers."""
    path = Path(ckpt) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    check_state_fields(raw, path)
    return TrainerState(**raw)


def check_state_fields(raw: Any, path: Path) -> None:
    """Every TrainerState field present with its type and in range, and nothing else."""
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    hints = typing.get_type_hints(TrainerState)
    unknown = sorted(raw.keys() - hints.keys())
    if unknown:
        raise ValueError(f"{path}: unknown field {unknown[0]!r}; known: {sorted(hints)}")
    for name, tp in hints.items():
        if name not in raw:
            raise ValueError(f"{path}: field {name!r} is missing")
        if not has_type(raw[name], tp):
            raise ValueError(f"{path}: {name} is {raw[name]!r}, expected {getattr(tp, '__name__', tp)}")
    for name, low in (("step", 1), ("epoch", 0), ("position", 0)):
        if raw[name] < low:
            raise ValueError(f"{path}: {name} is {raw[name]}, must be >= {low}")
    for key, count in raw["counters"].items():
        if not has_type(count, int) or count < 0:
            raise ValueError(f"{path}: counters.{key} is {count!r}, must be an integer >= 0")
    if raw["kind"] not in KINDS:
        raise ValueError(f"{path}: kind is {raw['kind']!r}, must be one of {list(KINDS)}")


def has_type(value: Any, tp: Any) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(has_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    base = typing.get_origin(tp) or tp
    return isinstance(value, base) and not (isinstance(value, bool) and base is not bool)


def load_optimizer_state(ckpt: Path, optimizer: torch.optim.Optimizer) -> None:
    path = ckpt / "optimizer.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt}: optimizer.pt missing; cannot resume exactly")
    try:
        optimizer.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path} does not fit this run's trainable parameters: {e}") from e


def is_adapter_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
