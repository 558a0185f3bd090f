"""Run `acestep-trainer` with one SIGKILL armed at a chosen point of the training code.

    python kill_at.py PHASE CALL -- train --config run.toml

The process kills itself (`SIGKILL`, as the out-of-memory killer or a power cut would: no handler,
no cleanup) on the CALL-th call of the function behind PHASE:

    step             the batch loss was computed, before its backward pass
    optimizer        inside the optimizer step, before the weights change
    checkpoint-adapter   a checkpoint's adapter is written, its state not yet
    checkpoint-state     a checkpoint's state is written, its COMPLETE marker not yet
    checkpoint-prune     a checkpoint is in place, the older ones not yet pruned
    checkpoint-delete    the CALL-th prune dies halfway through deleting an old checkpoint: its
                         COMPLETE marker and state are gone, its adapter not yet
    preview          one preview strength is rendered and written, the next not yet
    disk-full        not a kill: a checkpoint's state write fails with ENOSPC (a full disk),
                     its adapter already written

Nothing in the package knows about this: the points are reached by wrapping the functions from
outside, so the run is the one a user starts, killed where the test says.

The crash tests start their runs with `start_run`: each run is still its own process, killed for
real, but forked from a server process (`multiprocessing`'s forkserver) that imported the package
and its libraries once, so that forty runs do not each spend seconds importing torch, diffusers,
peft and Fabric before their first step.
"""

from __future__ import annotations

import errno
import functools
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from unittest import mock

# What a training run imports, loaded once by the server its runs are forked from.
PRELOAD = ("torch", "lightning_fabric", "torch.utils.tensorboard", "acestep.cli", "acestep.commands.training",
           "acestep.training.session", "acestep.training.loop", "acestep.training.checkpoint",
           "acestep.models.attention", "acestep.models.encoders", "acestep.models.load", "acestep.gpu.fit",
           "acestep.inference.training_hook", "acestep.inference.preview", "acestep.environment.report")
# One thread in every run: the reference and the resumed runs must reduce in the same order.
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def kill(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def disk_full(state, folder, *args, **kwargs) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


def die_in_the_next_deletion(*args, **kwargs) -> None:
    """Make the prune about to run die inside its first deletion of a checkpoint (the removal of a
    hidden `.step-N.del-PID` folder, `acestep.files.delete_folder`), after the deletion removed the
    COMPLETE marker and the state but before it reached the adapter. Every other removal of this
    process runs as usual."""
    remove = shutil.rmtree

    def half_delete(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(".step-") and ".del-" in path.name and (path / "adapter").is_dir():
            for name in ("COMPLETE", "state.json", "state.safetensors"):
                (path / name).unlink(missing_ok=True)
            kill()
        remove(path, *args, **kwargs)

    shutil.rmtree = half_delete  # the run's own process, which this kills


def arm(owner, name: str, call: int, after: bool, act=kill) -> None:
    """Replace `owner.name` with a wrapper that calls `act` (with the call's arguments) on its
    `call`-th call, before the original runs (`after` False) or once it has returned (`after` True)."""
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call and not after:
            act(*args, **kwargs)
        result = original(*args, **kwargs)
        if calls[0] == call and after:
            act(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def arm_phase(phase: str, call: int) -> None:
    if phase == "step":
        from acestep.training.session import TrainingSession

        arm(TrainingSession, "batch_loss", call, after=True)
    elif phase == "optimizer":
        from acestep.training import loop

        original = loop.Trainer._optimizer_step

        def with_optimizer_armed(self):  # arm the run's own optimizer, whatever its class
            if not getattr(self.s.optimizer, "_kill_armed", False):
                arm(self.s.optimizer, "step", call, after=False)
                self.s.optimizer._kill_armed = True
            return original(self)

        loop.Trainer._optimizer_step = with_optimizer_armed
    elif phase == "checkpoint-adapter":
        from acestep.training import checkpoint

        arm(checkpoint, "save_state", call, after=False)
    elif phase == "checkpoint-state":
        from acestep.training import checkpoint

        arm(checkpoint, "save_state", call, after=True)
    elif phase == "checkpoint-prune":
        from acestep.training import checkpoint

        arm(checkpoint, "prune_checkpoints", call, after=False)
    elif phase == "checkpoint-delete":
        from acestep.training import checkpoint

        arm(checkpoint, "prune_checkpoints", call, after=False, act=die_in_the_next_deletion)
    elif phase == "preview":
        from acestep.inference import training_hook

        arm(training_hook, "write_preview", call, after=True)
    elif phase == "disk-full":
        from acestep.training import checkpoint

        arm(checkpoint, "save_state", call, after=False, act=disk_full)
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase!r}")


# A forkserver child's exit status comes once, as four bytes on a pipe, to the first reader; a
# second thread reading it at the same moment finds the pipe at its end and takes the status for
# 255 ("perhaps the forkserver process itself got killed", multiprocessing.popen_forkserver). Two
# runs go at a time, and starting a process reads the status of every finished one
# (multiprocessing.process._cleanup): a run killed just then once read as 255 instead of -9. So
# every start and every read of a status holds this lock.
_STATUS = threading.Lock()


class Run:
    """One run started by `start_run`: a process whose output goes to a file."""

    def __init__(self, process: multiprocessing.Process, output: Path):
        self.process = process
        self.output_path = output

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or minus the signal that ended it; None while it runs."""
        with _STATUS:
            return self.process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        multiprocessing.connection.wait([self.process.sentinel], timeout)  # readable at the end; reads nothing
        if self.returncode is None:
            self.kill()
            multiprocessing.connection.wait([self.process.sentinel])
            raise TimeoutError(f"the run did not end in {timeout} s: {self.output()}")
        return self.returncode

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def communicate(self, timeout: float) -> str:
        """Wait for the end, then give everything the run printed."""
        self.wait(timeout)
        return self.output()


def start_server() -> None:
    """Start the server the runs are forked from (once per test process): it imports PRELOAD with
    the runs' environment, so the first run does not pay for it."""
    multiprocessing.forkserver.set_forkserver_preload(list(PRELOAD))
    with mock.patch.dict(os.environ, ENVIRONMENT):
        multiprocessing.forkserver.ensure_running()


def start_run(phase: str, call: int, output: Path, *command: str) -> Run:
    """Start `acestep-trainer COMMAND...` with PHASE armed at its CALL-th call, in a process forked
    from the server; what it prints goes to `output`."""
    start_server()
    process = multiprocessing.get_context("forkserver").Process(
        target=_run_child, args=(phase, call, str(output), list(command)), daemon=False)
    return started(process, output)


def started(process: multiprocessing.Process, output: Path) -> Run:
    """Start `process` and return its Run. The start holds `_STATUS`: starting a process reads the
    status of every process that ended."""
    with _STATUS:
        process.start()
    return Run(process, output)


def _run_child(phase: str, call: int, output: str, command: list[str]) -> None:
    os.environ.update(ENVIRONMENT)
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered, as PYTHONUNBUFFERED
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    import torch

    torch.set_num_threads(1)
    sys.exit(main([phase, str(call), "--", *command]))


def main(argv: list[str]) -> int:
    phase, call, separator, *command = argv
    if separator != "--":
        raise SystemExit(__doc__)
    arm_phase(phase, int(call))
    from acestep.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
