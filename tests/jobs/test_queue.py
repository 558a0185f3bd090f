"""GPU jobs queue per GPU: jobs on different GPUs run at once, on the same GPU one after the other,
a job on all GPUs shares with every GPU job, and a waiting job is never overtaken on its GPUs.
The rule on plain Job lists first, then with real child processes (tiny Python sleepers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from acestep.jobs import JobError, JobManager
from acestep.jobs.process import process_start
from acestep.jobs.queue import ready_to_start, waits_for
from acestep.jobs.store import JOB_FILE, Job
from acestep.ui.jobs_panel import job_heading, status_text

from support import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

# Prints "ready", then waits for its release file and exits 0 (exit 3 after 30 s without one).
SLEEPER = r"""
import os, sys, time
print("ready", flush=True)
deadline = time.time() + 30
while time.time() < deadline:
    if os.path.exists(sys.argv[1]):
        sys.exit(0)
    time.sleep(0.02)
sys.exit(3)
"""


def sleeper(release: Path) -> list[str]:
    return [sys.executable, "-c", SLEEPER, str(release)]


def job(name: str, status: str, gpus=None, needs_gpu: bool = True, kind: str = "preview") -> Job:
    return Job(id=name, kind=kind, argv=["x"], needs_gpu=needs_gpu, status=status, label=name,
               gpus=sorted(gpus) if gpus is not None else "all")


def statuses(manager: JobManager, *jobs: Job) -> list[str]:
    return [manager.get(each.id).status for each in jobs]


# ---- the rule ---------------------------------------------------------------------------------------
def test_the_rule_on_job_lists():
    on_0 = job("on-0", "running", {0})
    # a queued job on GPU 0 waits; one on GPU 1 starts; a CPU job always starts
    queue = [on_0, job("wait-0", "queued", {0}), job("on-1", "queued", {1}), job("cpu", "queued", needs_gpu=False)]
    assert [each.id for each in ready_to_start(queue)] == ["on-1", "cpu"]
    # a waiting job on GPUs 0 and 1 holds GPU 1 against a later GPU-1 job: it is not starved
    queue = [on_0, job("both", "queued", {0, 1}), job("later-1", "queued", {1}), job("later-2", "queued", {2})]
    assert [each.id for each in ready_to_start(queue)] == ["later-2"]
    assert waits_for(queue[2], queue) == [(queue[1], {1})]
    # "all" waits for any GPU job and holds back every later GPU job, but no CPU job
    queue = [on_0, job("all", "queued"), job("later-3", "queued", {3}), job("cpu", "queued", needs_gpu=False)]
    assert [each.id for each in ready_to_start(queue)] == ["cpu"]
    assert waits_for(queue[1], queue) == [(on_0, {0})]
    # of two queued jobs on the same free GPU, only the first starts
    queue = [job("first", "queued", {1}), job("second", "queued", {1}), job("done", "done", {1})]
    assert [each.id for each in ready_to_start(queue)] == ["first"]


def test_the_jobs_panel_says_which_gpus_a_job_takes_and_what_it_waits_for():
    training = job("my-run", "running", {0}, kind="train")
    waiting = Job(id="render-1", kind="preview", argv=["x"], needs_gpu=True, status="queued", gpus=[0], owner="bob")
    jobs = [training, job("pair", "queued", {0, 1}), waiting]
    assert status_text(training, jobs) == "running (GPU 0)"
    assert status_text(jobs[1], jobs) == "queued (GPUs 0,1), waits for GPU 0: train my-run"
    assert status_text(waiting, jobs) == ("queued (GPU 0), waits for GPU 0: train my-run; "
                                          "GPU 0: preview pair (queued before it)")
    assert status_text(job("old", "done"), jobs) == "done (all GPUs)"
    assert status_text(job("cpu", "running", needs_gpu=False), jobs) == "running"
    assert job_heading(waiting) == "Job **render-1** (bob): **queued**, waiting for GPU 0"
    assert job_heading(jobs[1], jobs) == "Job **pair**: **queued**, waits for GPU 0: train my-run"


# ---- with processes -------------------------------------------------------------------------------------
def test_jobs_on_different_gpus_run_at_once_and_on_the_same_gpu_queue(manager, tmp_path):
    release = tmp_path / "release"
    on_0 = manager.submit("train", sleeper(release), needs_gpu=True, gpus={0}, label="my-run")
    on_1 = manager.submit("preview", sleeper(release), needs_gpu=True, gpus=[1])
    also_0 = manager.submit("preprocess", sleeper(release), needs_gpu=True, gpus={0})
    cpu = manager.submit("split", sleeper(release), needs_gpu=False)
    assert statuses(manager, on_0, on_1, also_0, cpu) == ["running", "running", "queued", "running"]
    assert (on_0.gpus, on_1.gpus, cpu.gpus) == ([0], [1], [])
    assert [(blocker.id, shared) for blocker, shared in waits_for(also_0, manager.poll())] == [(on_0.id, {0})]
    release.touch()
    finished = [manager.wait(each.id, timeout=20) for each in (on_0, on_1, also_0, cpu)]
    assert [each.status for each in finished] == ["done"] * 4
    assert finished[2].started >= finished[0].ended  # the second GPU-0 job started after the first ended


def test_a_job_on_all_gpus_waits_for_every_gpu_job_and_holds_back_later_ones(manager, tmp_path):
    release_1, release_all = tmp_path / "release-1", tmp_path / "release-all"
    on_1 = manager.submit("preview", sleeper(release_1), needs_gpu=True, gpus={1})
    everything = manager.submit("train", sleeper(release_all), needs_gpu=True)  # no gpus given: all of them
    later_0 = manager.submit("preview", sleeper(release_all), needs_gpu=True, gpus={0})
    assert everything.gpus == "all"
    assert statuses(manager, on_1, everything, later_0) == ["running", "queued", "queued"]  # GPU 0 is free, yet
    release_1.touch()
    assert manager.wait(on_1.id, timeout=20).status == "done"
    wait_for(lambda: manager.poll() and manager.get(everything.id).status == "running", what="the all-GPU job")
    assert manager.get(later_0.id).status == "queued"  # blocked by the job on every GPU
    release_all.touch()
    everything, later_0 = manager.wait(everything.id, timeout=20), manager.wait(later_0.id, timeout=20)
    assert (everything.status, later_0.status) == ("done", "done") and later_0.started >= everything.ended


def test_a_waiting_gpu_0_job_is_not_overtaken_by_a_later_one_while_a_gpu_1_job_starts(manager, tmp_path):
    release_first, release_second, release_rest = (tmp_path / name for name in ("first", "second", "rest"))
    first = manager.submit("train", sleeper(release_first), needs_gpu=True, gpus={0}, label="my-run")
    second = manager.submit("preprocess", sleeper(release_second), needs_gpu=True, gpus={0})
    third = manager.submit("preview", sleeper(release_rest), needs_gpu=True, gpus={0})
    on_1 = manager.submit("preview", sleeper(release_rest), needs_gpu=True, gpus={1})
    assert statuses(manager, first, second, third, on_1) == ["running", "queued", "queued", "running"]
    release_first.touch()
    assert manager.wait(first.id, timeout=20).status == "done"
    wait_for(lambda: manager.poll() and manager.get(second.id).status == "running", what="the second GPU-0 job")
    assert manager.get(third.id).status == "queued"  # the second came first
    assert [blocker.id for blocker, _ in waits_for(manager.get(third.id), manager.list_jobs())] == [second.id]
    release_second.touch()
    release_rest.touch()
    assert [manager.wait(each.id, timeout=20).status for each in (second, third, on_1)] == ["done"] * 3
    assert manager.get(third.id).started >= manager.get(second.id).ended


def test_a_running_job_stored_before_gpus_were_recorded_holds_every_gpu(manager, tmp_path):
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # its live supervisor
    try:
        job_dir = manager.root / "20250101-000000-train-abcdef"
        job_dir.mkdir(parents=True)
        old = Job(id=job_dir.name, kind="train", argv=["x"], needs_gpu=True, status="running", created=1.0,
                  label="old run", runner_pid=runner.pid, runner_start=process_start(runner.pid))
        data = json.loads(old.to_json())
        del data["gpus"]  # the old format
        (job_dir / JOB_FILE).write_text(json.dumps(data))
        queued = manager.submit("preview", sleeper(tmp_path / "release"), needs_gpu=True, gpus={1})
        assert queued.status == "queued"
        assert status_text(queued, manager.poll()) == "queued (GPU 1), waits for GPU 1: train old run"
    finally:
        runner.kill()
        runner.wait()
    (tmp_path / "release").touch()
    assert manager.wait(queued.id, timeout=20).status == "done"  # the old job is found crashed; the queue moves
    assert manager.get(old.id).status == "crashed"


def test_gpus_that_make_no_sense_are_refused(manager):
    for needs_gpu, gpus, message in ((True, [], "job gpus must be 'all' or GPU indices"),
                                     (True, "cuda:1", "job gpus must be 'all' or GPU indices"),
                                     (True, [-1], "job gpus must be 'all' or GPU indices"),
                                     (False, {1}, "needs no GPU")):
        with pytest.raises(JobError, match=message):
            manager.submit("preview", ["x"], needs_gpu=needs_gpu, gpus=gpus)
    assert manager.list_jobs() == []
