"""One run per output_dir: an exclusive `flock` on `output_dir/.mmgrpo.lock` for the run's lifetime.

Two runs writing one folder would both prune, both save `checkpoint-N` and both claim the final
checkpoint. The lock is advisory but every `mmgrpo train` / `mmgrpo sft` takes it before writing
anything. The kernel drops a `flock` when its holder dies (SIGKILL, OOM, power cut of the node), so
a stale lock never blocks a resume: there is no pid file to clean up. The file keeps the holder's
pid, host and start time only so that a refusal can say who holds the folder.

Within one process a new run on the same folder takes over the lock (the earlier run ended, or
failed and left its objects to the garbage collector); the lock guards against other processes.
Under accelerate / torchrun only the main process locks, and its answer is broadcast so that every
process fails together instead of waiting in a collective for a peer that has given up.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".mmgrpo.lock"


class RunLockedError(RuntimeError):
    """output_dir is held by another live process; the message names it."""


class RunLock:
    _held: dict[Path, "RunLock"] = {}  # lock file -> the live lock this process holds on it

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, output_dir: str | Path, command: str) -> "RunLock":
        path = (Path(output_dir) / LOCK_FILE).resolve()
        earlier = cls._held.pop(path, None)
        if earlier is not None:  # this process's own earlier run: take its lock over
            lock, earlier.fd = cls(path, earlier.fd), -1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(refusal(Path(output_dir), holder)) from None
            except OSError as e:  # e.g. ENOLCK: a network file system without lock support
                os.close(fd)
                raise OSError(e.errno, f"{path}: cannot lock output_dir ({e.strerror}); runs in it could not be "
                                       "kept from overwriting each other") from e
            lock = cls(path, fd)
        lock._write_holder(command)
        cls._held[path] = lock
        return lock

    def _write_holder(self, command: str) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command, "argv": sys.argv}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        """Idempotent. The file stays: unlinking it would let a third process lock a new inode
        while a second still waits on the old one."""
        if self.fd < 0:
            return
        if RunLock._held.get(self.path) is self:
            del RunLock._held[self.path]
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = -1


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode())
    except (OSError, ValueError):
        return {}  # the holder is between taking the lock and writing its details


def refusal(output_dir: Path, holder: dict) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = f", started {holder['started']}" if "started" in holder else ""
    what = f" ({holder['command']})" if "command" in holder else ""
    return (f"output_dir {output_dir} is in use by {who}{since}{what}: two runs in one folder would overwrite "
            f"each other's checkpoints. Wait for it to finish or stop it (a killed run's lock is released at "
            f"once; resume it with resume_from=auto), or choose another output_dir")


def take(accelerator, output_dir: str | Path, command: str) -> RunLock | None:
    """The run's lock, on the main process (None on the others). Every process raises the main
    process's refusal: a process refused alone would leave its peers blocked in a collective."""
    lock, refused = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock.acquire(output_dir, command)
        except RunLockedError as e:
            refused = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refused = broadcast_object_list([refused])[0]
    if refused is not None:
        raise RunLockedError(refused)
    return lock
