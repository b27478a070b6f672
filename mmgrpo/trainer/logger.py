"""Per-step metrics to `metrics.jsonl`, TensorBoard and (when asked) Weights & Biases; sample
completions to `samples.jsonl`.

The logs describe the run the checkpoints describe. A resumed run replays the steps after its
checkpoint, so at open every sink is cut back to that step (`start_step`): the JSONL files are
truncated after its last record, TensorBoard purges later events (`purge_step`). A JSONL file never
ends in a partial record: a failed write (disk full) is rolled back to the last complete line, and
a partial last line found at open (a write the kernel cut short before a crash) is dropped.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

KNOWN_SINKS = ("jsonl", "tensorboard", "wandb")
EVENT_FILE_WAIT_S = 2.0


class JsonlFile:
    """Append-only JSON lines, one record per `step`, kept in step order."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        cut = cut_offset(path, start_step)
        if cut is not None:
            os.ftruncate(self.fd, cut)

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        end = os.fstat(self.fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write part of the buffer (the disk filled up mid-record)
                view = view[os.write(self.fd, view):]
        except OSError as e:
            os.ftruncate(self.fd, end)
            raise OSError(e.errno, f"{self.path}: writing step {records[0]['step']} failed ({e.strerror}); "
                                   "the file was rolled back to its last complete record") from e

    def close(self) -> None:
        os.close(self.fd)


def cut_offset(path: Path, start_step: int) -> int | None:
    """Byte offset to truncate at: the first partial line, or the first record of a step after
    `start_step` (records are in step order). None when the whole file is kept."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return offset
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                step = None  # not ours to judge: kept
            if isinstance(step, int) and step > start_step:
                return offset
            offset += len(line)
    return None


def wait_past_event_files(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name is
    `events.out.tfevents.<creation second>.<host>.<pid>...`: a resumed run's file created in the same
    second as the killed run's could sort before it (by pid), and its purge would then be undone by
    the older events read after it. Wait (at most `limit_s`) until the clock is past the newest file's
    second, so the new file sorts last (at most EVENT_FILE_WAIT_S: a clock behind the files' names
    must not hang the start)."""
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    deadline = time.time() + EVENT_FILE_WAIT_S
    while seconds and int(time.time()) <= max(seconds) and time.time() < deadline:
        time.sleep(0.05)


class MetricsLogger:
    """`start_step`: the step the run starts from (0, or the resumed checkpoint's): later records
    already in the logs are of steps this run trains again. `lock`: the run's `RunLock`, released
    when the logger closes, the last thing a run does."""

    def __init__(self, output_dir: str | Path, report_to: list[str], config: dict[str, Any], enabled: bool = True,
                 start_step: int = 0, lock=None):
        unknown = sorted(set(report_to) - set(KNOWN_SINKS))
        if unknown:
            raise ValueError(f"report_to: unknown sink {unknown[0]!r}; known: {list(KNOWN_SINKS)}")
        self.enabled = enabled  # False on non-main processes
        self.dir = Path(output_dir)
        self.lock = lock
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = JsonlFile(self.dir / "metrics.jsonl", start_step) if "jsonl" in report_to else None
        self.samples = JsonlFile(self.dir / "samples.jsonl", start_step)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            # the first step this run logs is start_step + 1: TensorBoard drops events from there on
            wait_past_event_files(self.dir / "tensorboard")
            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step + 1)
        if "wandb" in report_to:
            import wandb  # optional extra: pip install mmgrpo[wandb]

            self.wandb = wandb.init(config=config, dir=str(self.dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()}
        if self.jsonl is not None:
            self.jsonl.append([{"step": step, **clean}])
        if self.tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        self.samples.append([{"step": step, **r} for r in records])

    def flush(self) -> None:
        """Before a checkpoint is written: the logs then cover every step the checkpoint covers, even
        if the process is killed next (TensorBoard otherwise queues up to 120 s of events)."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            if self.jsonl is not None:
                self.jsonl.close()
            self.samples.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
        if self.lock is not None:
            self.lock.release()
