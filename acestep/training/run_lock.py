"""One process at a time trains a run folder.

Two processes training one run (a resume from the web app while the run still trains in a
terminal, or the same run resumed twice) would write the same checkpoints, events and adapters
over each other. The process that trains a run holds an operating-system lock on its
`.training.lock` for as long as it runs; another that asks for it is refused at once, before its
model loads, with who holds it. The lock goes with the process: a killed or crashed run leaves no
stale lock behind (the file stays; what counts is the lock on it). The file says which process
holds it, for the message. No torch here: the web app asks too (`holder`), before it deletes a
run or queues a resume.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from acestep.errors import TrainingError
from acestep.files import try_lock_file, unlock_file
from acestep.training.run_layout import TRAINING_LOCK

# Windows locks a byte far past the text, so the holder's text stays readable (POSIX locks the file).
_LOCKED_BYTE = 1 << 20


class RunLock:
    """The lock on a run folder, held from `acquire` to `release` (or the end of the process)."""

    def __init__(self, run_dir: Path, handle):
        self.run_dir, self._handle = Path(run_dir), handle

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        """Lock `run_dir` for this process, and write who holds it. Raises TrainingError naming the
        process that trains the run already."""
        run_dir = Path(run_dir)
        handle = open(run_dir / TRAINING_LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - closed in release()
        if not try_lock_file(handle, _LOCKED_BYTE):
            holder = _holder_text(handle)
            handle.close()
            raise TrainingError(f"{run_dir} is being trained by another process ({holder}); wait for it to end, "
                                "or stop it (Stop on the Train tab, Ctrl+C, or a file named STOP in the run "
                                "folder), then resume.")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}) + "\n")
        handle.flush()
        return cls(run_dir, handle)

    def release(self) -> None:
        if self._handle.closed:
            return
        unlock_file(self._handle, _LOCKED_BYTE)
        self._handle.close()


def holder(run_dir: str | Path) -> str | None:
    """Who trains `run_dir` now ('process 123 on box since 2026-11-27 22:10'), or None when no
    process does (the lock is free: it is taken and given back at once)."""
    path = Path(run_dir) / TRAINING_LOCK
    if not path.is_file():
        return None
    with open(path, "a+", encoding="utf-8") as handle:
        if try_lock_file(handle, _LOCKED_BYTE):
            unlock_file(handle, _LOCKED_BYTE)
            return None
        return _holder_text(handle)


def _holder_text(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.readline() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(info["since"])))
        return f"process {int(info['pid'])} on {info['host']} since {since}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not said which yet"
