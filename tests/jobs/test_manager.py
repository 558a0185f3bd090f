"""The job manager with real child processes: queueing, cancel, stop (SIGINT, STOP file, kill
after the timeout), crash detection after kill -9, a restarted manager, concurrent submits, and
a real CLI job from start to end. The commands are tiny Python scripts, except the last test."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from acestep.jobs import JobError, JobManager, cli_argv
from acestep.jobs.process import is_running, process_start
from acestep.jobs.runner import Supervisor, final_status, split_output
from acestep.jobs.store import JOB_FILE, Job

from support import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

# A command that prints "ready" and then waits for its release file (exit 0), stopping with exit
# 130 on SIGINT; "stubborn" ignores SIGINT and starts a helper process in its own group.
CHILD = r"""
import os, signal, subprocess, sys, time
mode, release = sys.argv[1], sys.argv[2]
if mode == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(f"helper {helper.pid}", flush=True)
else:
    def on_sigint(signum, frame):
        print("got SIGINT, stopping after the current item", flush=True)
        sys.exit(130)
    signal.signal(signal.SIGINT, on_sigint)
print("[1/2] first item", flush=True)
print("ready", flush=True)
deadline = time.time() + 30
while time.time() < deadline:
    if release and os.path.exists(release):
        print("released", flush=True)
        sys.exit(0)
    time.sleep(0.02)
sys.exit(3)
"""

# A stand-in for `train`: logs steps into <run>/events.jsonl until <run>/STOP appears (it ignores
# SIGINT, so only the STOP file can stop it cleanly), then exits 0.
FAKE_TRAIN = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
run = sys.argv[1]
os.makedirs(run, exist_ok=True)
events = open(os.path.join(run, "events.jsonl"), "a")
step = 0
while not os.path.exists(os.path.join(run, "STOP")):
    step += 1
    events.write(json.dumps({"type": "log", "step": step, "loss": 1.0 / step}) + "\n")
    events.flush()
    time.sleep(0.02)
    if step > 1500:
        sys.exit(3)
events.write(json.dumps({"type": "stop", "step": step}) + "\n")
events.flush()
print(f"stopped: step {step}", flush=True)
"""


def child(mode: str = "wait", release: Path | None = None) -> list[str]:
    return [sys.executable, "-c", CHILD, mode, str(release or "")]


def wait_ready(manager: JobManager, job_id: str, word: str = "ready") -> Job:
    """The job once its command has printed `word` (its pid is known by then)."""
    wait_for(lambda: word in manager.tail_log(job_id).splitlines(), what=f"{word!r} in the log of {job_id}")
    return manager.get(job_id)


def by_status(manager: JobManager) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for job in manager.list_jobs():
        result.setdefault(job.status, []).append(job.id)
    return result


# ---- queueing ---------------------------------------------------------------------------------------
def test_one_gpu_job_runs_the_next_starts_when_it_ends_and_cpu_jobs_run_alongside(manager, tmp_path):
    release = tmp_path / "release"
    first = manager.submit("train", child(release=release), needs_gpu=True, label="first")
    second = manager.submit("preprocess", child(release=release), needs_gpu=True)
    split = manager.submit("split", [sys.executable, "-c", "print('split done')"], needs_gpu=False)
    assert (first.status, second.status, split.status) == ("running", "queued", "running")
    assert second.pid is None and second.started is None
    assert manager.wait(split.id, timeout=10).status == "done"  # beside the GPU job, not behind it
    assert manager.poll() and manager.get(second.id).status == "queued"  # still busy: nothing starts

    wait_ready(manager, first.id)
    release.touch()
    first = manager.wait(first.id, timeout=10)
    assert (first.status, first.exit_code, first.message) == ("done", 0, "released")
    manager.poll()  # the first job's supervisor starts the next itself; poll does when it could not
    second = manager.get(second.id)
    assert second.status in ("running", "done") and second.started >= first.ended
    assert manager.wait(second.id, timeout=10).status == "done"


def test_a_queued_job_is_cancelled_and_never_starts(manager, tmp_path):
    release = tmp_path / "release"
    first = manager.submit("train", child(release=release), needs_gpu=True)
    queued = manager.submit("train", child(release=release), needs_gpu=True)
    cancelled = manager.stop(queued.id)
    assert (cancelled.status, cancelled.exit_code) == ("cancelled", None)
    assert cancelled.message == "cancelled before it started"
    wait_ready(manager, first.id)
    release.touch()
    assert manager.wait(first.id, timeout=10).status == "done"
    manager.poll()
    after = manager.get(queued.id)
    assert (after.status, after.pid, after.runner_pid, after.started) == ("cancelled", None, None, None)
    assert manager.stop(queued.id).status == "cancelled"  # stopping a finished job changes nothing


# ---- stop ---------------------------------------------------------------------------------------------
def test_stop_sends_sigint_and_a_clean_exit_130_is_stopped(manager):
    job = manager.submit("caption", child(), needs_gpu=True)
    wait_ready(manager, job.id)
    started = time.monotonic()
    stopping = manager.stop(job.id, timeout=20)
    assert stopping.status == "stopping" and stopping.kill_at - stopping.stop_requested == pytest.approx(20)
    job = manager.wait(job.id, timeout=10)
    assert time.monotonic() - started < 5  # the interrupt, not the 20 s kill
    assert (job.status, job.exit_code) == ("stopped", 130)
    assert job.message == "got SIGINT, stopping after the current item"
    log = manager.tail_log(job.id).splitlines()
    assert log[1:3] == ["[1/2] first item", "ready"]
    assert any(line.endswith("stop requested: sent SIGINT") for line in log)
    assert log[-1].endswith("stopped: exit status 130 (got SIGINT, stopping after the current item)")
    events, _ = manager.read_events(job.id)
    assert [event["type"] for event in events] == ["start", "progress", "exit"]
    assert events[1] | {"time": 0} == {"type": "progress", "time": 0, "index": 1, "total": 2, "message": "first item"}
    assert events[2]["status"] == "stopped" and events[2]["exit_code"] == 130


def test_a_job_that_ignores_sigint_is_killed_with_its_processes_after_the_timeout(manager):
    job = manager.submit("merge", child("stubborn"), needs_gpu=True)
    wait_ready(manager, job.id)
    helper = int(next(line for line in manager.tail_log(job.id).splitlines() if line.startswith("helper "))[7:])
    assert process_start(helper) is not None
    started = time.monotonic()
    manager.stop(job.id, timeout=0.5)
    job = manager.wait(job.id, timeout=10)
    assert 0.5 <= time.monotonic() - started < 5
    assert (job.status, job.exit_code) == ("stopped", -signal.SIGKILL)
    assert job.message == "did not stop within its timeout; killed (killed by signal SIGKILL)"
    wait_for(lambda: process_start(helper) is None, 5, "the helper in the job's process group to die")
    assert not is_running(job.pid, job.pid_start)


def test_a_train_job_is_stopped_by_its_stop_file_and_its_run_events_are_read(manager, tmp_path):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "STOP").write_text("left from an earlier run")  # must not stop the new one
    job = manager.submit("train", [sys.executable, "-c", FAKE_TRAIN, str(run)], needs_gpu=True,
                         events_path=run / "events.jsonl")
    assert job.stop_file == str(run / "STOP")
    events, offset = wait_for(lambda: (lambda got: got if len(got[0]) >= 5 else None)(manager.read_events(job.id)),
                              what="five logged steps")
    assert [event["step"] for event in events[:5]] == [1, 2, 3, 4, 5]
    assert offset == sum(len(json.dumps(e)) + 1 for e in events)
    manager.stop(job.id, timeout=20)
    job = manager.wait(job.id, timeout=10)
    assert (job.status, job.exit_code) == ("stopped", 0)  # exit 0 after a requested stop: still "stopped"
    rest, _ = manager.read_events(job.id, since=offset)
    assert rest[-1]["type"] == "stop" and rest[-1]["step"] == len(events) + len(rest) - 1
    assert job.message == f"stopped: step {rest[-1]['step']}"
    assert not (run / "STOP").exists()  # removed, so that a resume runs


def test_sigterm_to_the_supervisor_stops_the_job_cleanly(manager):
    job = wait_ready(manager, manager.submit("caption", child(), needs_gpu=True).id)
    os.kill(job.runner_pid, signal.SIGTERM)  # as a system shutdown would
    job = manager.wait(job.id, timeout=10)
    assert (job.status, job.exit_code) == ("stopped", 130)
    assert "supervisor received SIGTERM; stopping the job" in manager.tail_log(job.id)


def test_a_job_stopped_before_its_command_started_never_runs_it(manager, tmp_path):
    job_dir = manager.root / "20250101-000000-train-000001"
    job_dir.mkdir(parents=True)
    job = Job(id=job_dir.name, kind="train", argv=child(), needs_gpu=True, status="stopping", created=1.0,
              runner_pid=os.getpid(), stop_requested=2.0, kill_at=3.0)
    (job_dir / JOB_FILE).write_text(job.to_json())
    Supervisor(manager.store, job.id).run()
    job = manager.get(job.id)
    assert (job.status, job.pid, job.message) == ("stopped", None, "stopped before its command started")


LEAVES_A_HELPER = r"""
import subprocess, sys
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # inherits the output pipes
print(f"helper {helper.pid}", flush=True)
"""


def test_what_a_finished_command_leaves_in_its_process_group_is_killed(manager):
    started = time.monotonic()
    job = manager.wait(manager.submit("split", [sys.executable, "-c", LEAVES_A_HELPER], needs_gpu=True).id, 10)
    assert job.status == "done" and time.monotonic() - started < 4  # not held up by the helper's open pipes
    helper = int(job.message.removeprefix("helper "))
    wait_for(lambda: process_start(helper) is None, 5, "the helper left behind to die")


# ---- crashes ------------------------------------------------------------------------------------------
def test_kill_9_of_the_command_is_a_crash_with_its_log_kept(manager):
    job = wait_ready(manager, manager.submit("preview", child(), needs_gpu=True).id)
    os.kill(job.pid, signal.SIGKILL)
    job = manager.wait(job.id, timeout=10)
    assert (job.status, job.exit_code) == ("crashed", -signal.SIGKILL)
    assert job.message == "killed by signal SIGKILL (by the out-of-memory killer, or by hand)"
    assert "ready" in manager.tail_log(job.id).splitlines()


def test_a_job_whose_processes_all_vanished_is_crashed_and_the_queue_moves_on(manager, tmp_path):
    release = tmp_path / "release"
    job = manager.submit("train", child(), needs_gpu=True)
    queued = manager.submit("train", child(release=release), needs_gpu=True)
    job = wait_ready(manager, job.id)
    os.kill(job.runner_pid, signal.SIGKILL)  # the supervisor and the command, as a power cut would
    os.kill(job.pid, signal.SIGKILL)
    wait_for(lambda: not is_running(job.pid, job.pid_start) and not is_running(job.runner_pid, job.runner_start))
    assert manager.get(job.id).status == "running"  # nobody has looked yet
    restarted = JobManager(manager.root)
    restarted.poll()
    crashed = restarted.get(job.id)
    assert (crashed.status, crashed.exit_code) == ("crashed", None)
    assert crashed.message == ("its process ended without recording a result (killed, or the machine restarted); "
                               "last output: ready")
    assert restarted.get(queued.id).status == "running"
    assert "ready" in restarted.tail_log(job.id)
    events, _ = restarted.read_events(job.id)
    assert events[-1]["type"] == "exit" and events[-1]["status"] == "crashed"


def test_a_command_left_without_its_supervisor_is_killed_and_crashed(manager):
    job = wait_ready(manager, manager.submit("train", child(), needs_gpu=True).id)
    os.kill(job.runner_pid, signal.SIGKILL)
    wait_for(lambda: not is_running(job.runner_pid, job.runner_start))
    manager.poll()
    crashed = manager.get(job.id)
    assert crashed.status == "crashed"
    assert crashed.message.startswith("its supervisor vanished while the command still ran (the command was killed)")
    wait_for(lambda: not is_running(job.pid, job.pid_start), 5, "the orphaned command to die")


def test_a_reused_pid_is_not_taken_for_the_job_nor_killed(manager):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        job_dir = manager.root / "20250101-000000-train-abcdef"
        job_dir.mkdir(parents=True)
        real_start = process_start(stranger.pid)
        job = Job(id=job_dir.name, kind="train", argv=["x"], needs_gpu=True, status="running", created=1.0,
                  runner_pid=stranger.pid, runner_start=real_start - 100, pid=stranger.pid, pid_start=real_start - 50)
        (job_dir / JOB_FILE).write_text(job.to_json())
        manager.poll()
        assert manager.get(job.id).status == "crashed"
        assert stranger.poll() is None  # same pid, another process: left alone
    finally:
        stranger.kill()
        stranger.wait()


# ---- restart and concurrency --------------------------------------------------------------------------
def test_a_new_manager_over_the_same_root_sees_and_stops_the_same_jobs(manager, tmp_path):
    release = tmp_path / "release"
    running = manager.submit("train", child(release=release), needs_gpu=True, label="night run", owner="ana")
    queued = manager.submit("preprocess", child(release=release), needs_gpu=True)
    running = wait_ready(manager, running.id)
    restarted = JobManager(tmp_path / "jobs")
    assert [job.id for job in restarted.poll()] == [running.id, queued.id]
    seen = restarted.get(running.id)
    assert (seen.status, seen.pid, seen.label, seen.owner) == ("running", running.pid, "night run", "ana")
    assert restarted.get(queued.id).status == "queued"
    assert restarted.stop(running.id).status == "stopping"
    assert manager.wait(running.id, timeout=10).status == "stopped"  # the first instance sees it too
    assert restarted.wait(queued.id, timeout=0.05).status in ("queued", "running")


SUBMIT_FROM_ANOTHER_PROCESS = r"""
import json, os, sys, time
from acestep.jobs import JobManager
root, go, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
manager = JobManager(root)
print("waiting", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
print(manager.submit("train", argv, needs_gpu=True).status, flush=True)
"""


def test_concurrent_submits_from_threads_and_processes_start_exactly_one_gpu_job(manager, tmp_path):
    release, go = tmp_path / "release", tmp_path / "go"
    argv = child(release=release)
    others = [subprocess.Popen([sys.executable, "-c", SUBMIT_FROM_ANOTHER_PROCESS, str(manager.root), str(go),
                                json.dumps(argv)], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for process in others:
        assert process.stdout.readline() == "waiting\n"
    barrier = threading.Barrier(6)
    statuses = []

    def submit():
        barrier.wait()
        statuses.append(JobManager(manager.root).submit("train", argv, needs_gpu=True).status)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    go.touch()
    for thread in threads:
        thread.join(10)
    statuses += [process.communicate(timeout=10)[0].strip() for process in others]
    assert sorted(statuses) == ["queued"] * 8 + ["running"]
    jobs = by_status(manager)
    assert len(jobs["running"]) == 1 and len(jobs["queued"]) == 8
    manager.poll()
    assert len(by_status(manager)["running"]) == 1  # polling starts nothing while the GPU is busy


def test_poll_changes_nothing_when_nothing_changed(manager, tmp_path):
    job = manager.submit("train", child(release=tmp_path / "release"), needs_gpu=True)
    queued = manager.submit("train", child(), needs_gpu=True)
    wait_ready(manager, job.id)
    files = [manager.root / job_id / JOB_FILE for job_id in (job.id, queued.id)]
    before = [path.stat().st_mtime_ns for path in files]
    for _ in range(20):
        manager.poll()
    assert [path.stat().st_mtime_ns for path in files] == before
    assert [j.status for j in manager.list_jobs()] == ["running", "queued"]


# ---- the real CLI ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_cli_job_runs_to_done_and_its_log_holds_the_output(manager, tmp_path):
    out = tmp_path / "checkpoints"
    job = manager.submit("download", cli_argv("tiny-checkpoint", out), needs_gpu=False, cwd=tmp_path)
    job = manager.wait(job.id, timeout=60)
    assert (job.status, job.exit_code) == ("done", 0), manager.tail_log(job.id)
    expected = f"Wrote tiny checkpoints to {out}: acestep-v15-turbo/, vae/, Qwen3-Embedding-0.6B/"
    assert job.message == expected
    assert expected in manager.tail_log(job.id, 200).splitlines()
    assert (out / "acestep-v15-turbo" / "config.json").is_file()


@pytest.mark.slow
def test_a_real_train_job_reports_its_loss_and_stops_after_a_saved_step(manager, tmp_path, tiny_checkpoints):
    from acestep.training.config import TrainingConfig, apply_overrides, save_config

    from training.conftest import write_tensors_dir

    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 12)
    config = save_config(apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={tensors}", f"model.checkpoint={dit}", f"run.output_dir={tmp_path / 'runs'}",
        "run.name=demo", "adapter.rank=4", "adapter.alpha=8", "data.max_seconds=1.2", "run.accelerator=cpu",
        "run.epochs=100", "run.log_every_steps=1"]), tmp_path / "demo.toml")
    run = tmp_path / "runs" / "demo"
    job = manager.submit("train", cli_argv("train", "--config", config), needs_gpu=True,
                         events_path=run / "events.jsonl", label="demo")
    seen: list[dict] = []
    offset = 0

    def two_steps_logged():
        nonlocal offset
        events, offset = manager.read_events(job.id, since=offset)
        seen.extend(events)
        return sum(event["type"] == "log" for event in seen) >= 2

    wait_for(two_steps_logged, timeout=120, what="two logged training steps")
    assert seen[0]["type"] == "start" and all(event["loss"] > 0 for event in seen if event["type"] == "log")
    manager.stop(job.id, timeout=60)
    job = manager.wait(job.id, timeout=90)
    assert (job.status, job.exit_code) == ("stopped", 130), manager.tail_log(job.id)
    events, _ = manager.read_events(job.id, since=offset)
    step = events[-1]["step"]
    assert events[-1]["type"] == "stop" and (run / "checkpoints" / f"step-{step:06d}" / "COMPLETE").is_file()
    assert job.message == f"stopped: step {step}, epoch {events[-1]['epoch']}; run folder {run}"
    assert not (run / "STOP").exists()


def test_a_cli_user_error_fails_with_its_error_line(manager, tmp_path):
    job = manager.submit("download", cli_argv("download", "--checkpoints-dir", tmp_path), needs_gpu=False)
    job = manager.wait(job.id, timeout=20)
    assert (job.status, job.exit_code) == ("failed", 1)
    assert job.message == "error: Name at least one model (see `acestep-trainer download --list`)."


def test_a_command_that_cannot_start_fails(manager, tmp_path):
    job = manager.submit("split", [str(tmp_path / "no-such-program")], needs_gpu=True)
    job = manager.wait(job.id, timeout=10)
    assert job.status == "failed" and job.message.startswith(f"cannot start {tmp_path / 'no-such-program'}: ")
    assert job.pid is None


# ---- small parts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, stop, killed, status, message", [
    (0, False, False, "done", "last line"),
    (0, True, False, "stopped", "last line"),
    (130, False, False, "stopped", "last line"),
    (-signal.SIGINT, True, False, "stopped", "last line"),
    (2, False, False, "done", "finished, but some files failed (listed in the log): last line"),
    (1, False, False, "failed", "error: bad path"),
    (1, True, False, "failed", "error: bad path"),
    (-signal.SIGSEGV, False, False, "crashed", "killed by signal SIGSEGV; last error: error: bad path"),
    (-signal.SIGKILL, False, False, "crashed", "killed by signal SIGKILL (by the out-of-memory killer, or by hand); "
                                               "last error: error: bad path"),
    (-signal.SIGKILL, True, True, "stopped", "did not stop within its timeout; killed (killed by signal SIGKILL)"),
])
def test_final_status_follows_the_cli_exit_codes(code, stop, killed, status, message):
    assert final_status(code, stop, killed, "error: bad path", "last line") == (status, message)


def test_output_lines_and_progress_bars_are_split_across_reads():
    class Chunks(io.RawIOBase):
        def __init__(self, chunks):
            self.chunks = list(chunks)

        def read1(self, size=-1):
            return self.chunks.pop(0) if self.chunks else b""

    chunks = [b"one\ntw", b"o\r", b"\nbar 10%\rbar 50%\r", b"bar 100%\n", b"tail"]
    assert list(split_output(Chunks(chunks))) == [
        (b"one", False), (b"two", False), (b"bar 10%", True), (b"bar 50%", True), (b"bar 100%", False),
        (b"tail", False)]


def test_read_events_returns_whole_lines_and_flags_broken_ones(manager, tmp_path):
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b'{"type": "log", "step": 1}\nnot json\n{"type": "log", "st')
    job = manager.submit("split", [sys.executable, "-c", "pass"], needs_gpu=False, events_path=events_file)
    events, offset = manager.read_events(job.id)
    assert events == [{"type": "log", "step": 1},
                      {"type": "warning", "message": f"{events_file}: unreadable event line at byte 27"}]
    assert offset == 36
    with open(events_file, "ab") as stream:
        stream.write(b'ep": 2}\n')
    assert manager.read_events(job.id, since=offset) == ([{"type": "log", "step": 2}], offset + 27)
    events_file.write_bytes(b'{"type": "start"}\n')  # replaced by a shorter file: read from its start
    assert manager.read_events(job.id, since=offset + 27) == ([{"type": "start"}], 18)


def test_unknown_jobs_bad_ids_and_bad_submissions_raise(manager, tmp_path):
    with pytest.raises(JobError, match="No job '20250101-000000-train-000000' in "):
        manager.get("20250101-000000-train-000000")
    with pytest.raises(JobError, match="is not a job id"):
        manager.tail_log("../../etc")
    with pytest.raises(JobError, match="job kind 'Train!'"):
        manager.submit("Train!", ["x"], needs_gpu=True)
    with pytest.raises(JobError, match="non-empty list of strings"):
        manager.submit("train", "python -m acestep.cli train", needs_gpu=True)
    assert manager.list_jobs() == []


def test_remove_refuses_an_active_job_and_deletes_a_finished_one(manager, tmp_path):
    job = manager.submit("train", child(release=tmp_path / "release"), needs_gpu=True)
    with pytest.raises(JobError, match="is running; stop it before removing it"):
        manager.remove(job.id)
    (tmp_path / "release").touch()
    manager.wait(job.id, timeout=10)
    manager.remove(job.id)
    assert manager.list_jobs() == [] and not (manager.root / job.id).exists()


def test_cli_argv_runs_this_python():
    assert cli_argv("train", "--config", Path("a b.toml")) == [
        sys.executable, "-m", "acestep.cli", "train", "--config", "a b.toml"]
