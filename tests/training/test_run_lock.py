"""One process at a time trains a run folder: the lock, who holds it, and a resume refused while
another process trains the run."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from acestep.errors import TrainingError
from acestep.training.loop import STOP_FILE, train
from acestep.training.run_layout import CONFIG_FILE, TRAINING_LOCK
from acestep.training.run_lock import RunLock, holder
from support import wait_for

from .test_loop import events, make_config


def test_a_held_run_is_refused_to_a_second_taker_and_free_again_once_released(tmp_path):
    assert holder(tmp_path) is None  # no lock file yet
    lock = RunLock.acquire(tmp_path)
    said = holder(tmp_path)
    assert said.startswith(f"process {os.getpid()} on {socket.gethostname()} since ")
    with pytest.raises(TrainingError, match=rf"is being trained by another process \(process {os.getpid()} .*\); "
                                            "wait for it to end, or stop it"):
        RunLock.acquire(tmp_path)
    lock.release()
    lock.release()  # twice is harmless
    assert holder(tmp_path) is None
    RunLock.acquire(tmp_path).release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from acestep.training.run_lock import RunLock
        lock = RunLock.acquire({str(tmp_path)!r})
        print("held", flush=True)
        time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        assert holder(tmp_path).startswith(f"process {process.pid} on ")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    wait_for(lambda: holder(tmp_path) is None, 10, "the lock to go with the killed process")
    assert (tmp_path / TRAINING_LOCK).is_file()  # the file stays; the lock on it is what counts
    RunLock.acquire(tmp_path).release()


def test_a_run_holds_its_lock_while_it_trains_and_a_second_resume_is_refused_before_loading(
        tmp_path, tensors_17, tiny_dit):
    seen = []
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1")
    result = train(config, listeners=[lambda event: seen.append(holder(tmp_path / "runs" / "run"))
                                      if event["type"] == "start" else None])
    assert seen[0].startswith(f"process {os.getpid()} on ")  # held while it trained
    run = result.run_dir
    assert holder(run) is None  # and given back at the end
    (run / STOP_FILE).write_text("")
    config_before, events_before = (run / CONFIG_FILE).read_text(), events(run)
    other = RunLock.acquire(run)  # another process trains it
    try:
        with pytest.raises(TrainingError, match="is being trained by another process"):
            train(config, resume=run)
    finally:
        other.release()
    # nothing of the run was touched: its config, its events, the STOP file the other process may answer
    assert (run / STOP_FILE).exists() and (run / CONFIG_FILE).read_text() == config_before
    assert events(run) == events_before
