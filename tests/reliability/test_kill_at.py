"""The crash tests' process helper (`kill_at.py`): a killed run's status reads as the signal that
ended it, however many threads ask for it at once."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time

from .kill_at import Run, started


def read_status(run: Run, codes: list) -> None:
    while (code := run.poll()) is None:
        pass
    codes.append(code)


def test_a_killed_runs_status_is_the_signal_even_when_threads_read_it_at_once(tmp_path):
    """A forkserver child's status comes once, on a pipe: read by two threads at the same moment,
    one of them found the pipe at its end and took the status for 255 (three threads polling one
    killed child's `exitcode` read it in 117 of 300 trials; once in the crash test, where starting
    a run reads the status of the other run). Through `Run`, every reader gets -SIGKILL; with
    `kill_at._STATUS` made a no-op this test fails."""
    context = multiprocessing.get_context("forkserver")
    for trial in range(30):
        run: Run = started(context.Process(target=time.sleep, args=(60,)), tmp_path / "out.log")
        codes = []
        readers = [threading.Thread(target=read_status, args=(run, codes)) for _ in range(3)]
        for reader in readers:
            reader.start()
        starter = threading.Thread(target=lambda: started(context.Process(target=time.sleep, args=(0,)),
                                                          tmp_path / "other.log").wait(60))
        starter.start()  # a start reads the status of every process that ended
        run.kill()
        for thread in (*readers, starter):
            thread.join(60)
        assert codes == [-signal.SIGKILL] * 3 and run.wait(60) == -signal.SIGKILL, f"trial {trial}: {codes}"
