"""The job manager: submit long jobs (the CLI in child processes), queue GPU jobs one at a time per
GPU (see `acestep.jobs.queue`), stop them, and tell every browser (and the app after a restart)
the same story from disk.

A `JobManager` holds no state of its own beyond a read cache: every instance over the same jobs
root, in any process, sees and changes the same jobs (see `acestep.jobs.store` for the layout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import acestep
from acestep.files import tail_lines
from acestep.jobs.gpus import ALL_GPUS, NO_GPU, is_gpu_index
from acestep.jobs.process import is_running, kill_tree, process_start, spawn
from acestep.jobs.queue import ready_to_start
from acestep.jobs.store import (
    CANCELLED,
    CRASHED,
    FAILED,
    QUEUED,
    RUNNING,
    STOPPED,
    STOPPING,
    Job,
    JobError,
    JobStore,
)
from acestep.training.run_layout import STOP_FILE

DEFAULT_STOP_TIMEOUT = 120.0  # seconds a stopping job gets to finish its step and save before it is killed
SUPERVISOR_GRACE = 15.0  # after the kill time, how long the supervisor gets to do the kill itself
TRAIN_KIND = "train"  # the job kind of `acestep-trainer train`
MAX_EVENTS_BYTES = 8 * 2**20  # read_events returns at most this much per call (call again for more)
MAX_TAIL_BYTES = 256 * 2**10


def cli_argv(*args: object) -> list[str]:
    """The argv that runs `acestep-trainer <args>` with this Python: `cli_argv("train", "--config", path)`."""
    return [sys.executable, "-m", "acestep.cli", *(str(arg) for arg in args)]


class JobManager:
    """Jobs under `root` (e.g. `<project>/runs/.jobs`). Every method may be called from any
    thread or process at any time; state changes hold the jobs lock."""

    def __init__(self, root: str | Path, python: str | None = None):
        self.store = JobStore(root)
        self.python = python or sys.executable  # runs the supervisor (`acestep.jobs.runner`)

    @property
    def root(self) -> Path:
        return self.store.root

    # ---- changing jobs -----------------------------------------------------------------------------
    def submit(self, kind: str, argv: list[str], needs_gpu: bool, events_path: str | Path | None = None,
               label: str = "", owner: str = "", cwd: str | Path | None = None,
               env: dict[str, str] | None = None, stop_file: str | Path | None = None,
               gpus: Iterable[int] | str | None = None) -> Job:
        """Queue `argv` (the full command line, e.g. from `cli_argv`) as a job of `kind` and start
        it at once when it may run: a CPU job always, a GPU job when no job running or queued
        before it shares a GPU with it. `gpus` says which a GPU job takes: CUDA indices (from
        `acestep.jobs.gpus`), or ALL_GPUS (the default, for a job that cannot say); a CPU job
        takes none. `events_path` is what `read_events` reads (a train job's `<run>/events.jsonl`;
        default the job's own events.jsonl); a train job's STOP file goes beside it unless
        `stop_file` says otherwise. `cwd` defaults to the current folder, `env` adds variables.
        Returns the job (queued, running, or failed when it could not start).
        Raises JobError for a malformed kind, argv or gpus."""
        gpu_list = _gpu_list(needs_gpu, gpus)
        if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(arg, str) for arg in argv):
            raise JobError(f"job argv must be a non-empty list of strings, not {argv!r}.")
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise JobError("job env must map strings to strings.")
        cwd = Path(cwd or Path.cwd()).resolve()
        events = (cwd / Path(events_path).expanduser()).resolve() if events_path else None
        if stop_file is None and kind == TRAIN_KIND and events is not None:
            stop_file = events.parent / STOP_FILE
        with self.store.lock():
            job_id = self.store.new_id(kind)
            job = Job(id=job_id, kind=kind, argv=list(argv), needs_gpu=bool(needs_gpu), gpus=gpu_list,
                      label=str(label), owner=str(owner), cwd=str(cwd), env=dict(env or {}),
                      events_path=str(events or self.store.own_events_path(job_id)),
                      stop_file=str((cwd / Path(stop_file)).resolve()) if stop_file else None, created=time.time())
            self.store.job_dir(job_id).mkdir(parents=True)
            self.store.write(job)
            self._start_ready(self.store.read_all(fresh=True))
            return self.store.read(job_id)

    def stop(self, job_id: str, timeout: float = DEFAULT_STOP_TIMEOUT, force: bool = False) -> Job:
        """Stop a job without waiting: a queued job is cancelled; a running one becomes
        `stopping`, and its supervisor interrupts it (SIGINT; a train run also gets its STOP file)
        and kills it with its processes if it still runs `timeout` seconds later (at once with
        `force`). Asking again never interrupts twice (a second Ctrl+C aborts a train run without
        saving); it can only bring the kill time closer. A finished job is returned unchanged."""
        with self.store.lock():
            job = self.store.read(job_id)
            now = time.time()
            kill_at = now if force else now + max(0.0, timeout)
            if job.status == QUEUED:
                self._end(job, CANCELLED, None, "cancelled before it started")
            elif job.status == RUNNING:
                job.status, job.stop_requested, job.kill_at = STOPPING, now, kill_at
                self.store.write(job)
            elif job.status == STOPPING and (job.kill_at is None or kill_at < job.kill_at):
                job.kill_at = kill_at
                self.store.write(job)
            return self.store.read(job_id)

    def poll(self) -> list[Job]:
        """Reconcile the jobs with their processes and start what may start; returns `list_jobs()`.
        A running job whose supervisor is gone without recording a result is marked crashed
        (what is left of its command is killed; its log and events are kept); a stopping job past
        its kill time whose supervisor did not kill it is killed here. Idempotent and cheap when
        nothing changed (no lock, one stat per job): every browser's timer may call it."""
        jobs = self.store.read_all()
        if not ready_to_start(jobs) and not any(self._needs_reconciling(job) for job in jobs if job.active):
            return jobs
        with self.store.lock():
            for job in self.store.read_all(fresh=True):
                if job.active:
                    self._reconcile(job)
            self._start_ready(self.store.read_all(fresh=True))
        return self.store.read_all()

    def remove(self, job_id: str) -> None:
        """Delete a finished job's folder (its state, log and own events; a run folder stays).
        Raises JobError for a job that is queued or running."""
        with self.store.lock():
            job = self.store.read(job_id)
            if not job.finished:
                raise JobError(f"Job {job_id} is {job.status}; stop it before removing it.")
            shutil.rmtree(self.store.job_dir(job_id))
            self.store.forget(job_id)

    # ---- reading ---------------------------------------------------------------------------------
    def list_jobs(self) -> list[Job]:
        """Every job, oldest first (the queue's order), as on disk now (no reconciling: see poll)."""
        return self.store.read_all()

    def get(self, job_id: str) -> Job:
        """One job. Raises JobError when it does not exist or its job.json is unreadable."""
        return self.store.read(job_id)

    def read_events(self, job_id: str, since: int = 0) -> tuple[list[dict], int]:
        """The events appended to the job's events file after byte `since`, and the offset to pass
        next time. Only whole lines are returned; a line that is not a JSON object comes back as a
        `warning` event. A file shorter than `since` was replaced and is read from its start."""
        path = Path(self.get(job_id).events_path)
        try:
            with open(path, "rb") as stream:
                if since > os.fstat(stream.fileno()).st_size:
                    since = 0
                stream.seek(since)
                data = stream.read(MAX_EVENTS_BYTES)
        except FileNotFoundError:
            return [], since
        end = data.rfind(b"\n") + 1
        events, offset = [], since
        for line in data[:end].splitlines(keepends=True):
            events.extend(_parse_event(line, path, offset))
            offset += len(line)
        return events, since + end

    def tail_log(self, job_id: str, lines: int = 50) -> str:
        """The last `lines` lines of the job's log (from at most its last 256 KiB), '' before it starts."""
        path = self.store.log_path(job_id)
        if not path.is_file():
            self.get(job_id)  # an unknown job raises
            return ""
        return "\n".join(tail_lines(path, lines, MAX_TAIL_BYTES)[0])

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.1) -> Job:
        """Poll until the job has finished or `timeout` seconds passed; returns the job either way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            job = self.get(job_id)
            if job.finished or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(interval)

    # ---- inside the lock -----------------------------------------------------------------------------
    def _needs_reconciling(self, job: Job) -> bool:
        """An active job whose supervisor is gone, or that is overdue for its kill."""
        if not is_running(job.runner_pid, job.runner_start):
            return True
        return job.kill_at is not None and time.time() > job.kill_at + SUPERVISOR_GRACE

    def _start_ready(self, jobs: list[Job]) -> None:
        """Start every queued job the queue's rule lets start (`ready_to_start`). A job that fails
        to start frees its GPUs for the jobs behind it, so look again until none is ready."""
        while ready := ready_to_start(jobs):
            for job in ready:
                self._launch(job)  # leaves it running or failed: never queued, so this loop ends

    def _launch(self, job: Job) -> None:
        """Start the job's supervisor, detached from this process, and mark the job running."""
        env = dict(os.environ)
        source = _source_checkout()
        if source:  # the supervisor and the command start in the job's cwd: let them import this acestep
            env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        argv = [self.python, "-m", "acestep.jobs.runner", str(self.root), job.id]
        try:
            with open(self.store.log_path(job.id), "ab") as log:
                runner = spawn(argv, job.cwd or None, env, log, subprocess.STDOUT, own_console=True)
        except OSError as exc:
            self._end(job, FAILED, None, f"cannot start the job's supervisor ({self.python}): {exc.strerror or exc}")
            return
        # Reap it when it ends while this process lives (no zombie); after this process exits, init does.
        threading.Thread(target=runner.wait, name=f"reap-{job.id}", daemon=True).start()
        job.status, job.started = RUNNING, time.time()
        job.runner_pid, job.runner_start = runner.pid, process_start(runner.pid)
        self.store.write(job)

    def _reconcile(self, job: Job) -> None:
        """Settle an active job whose supervisor is gone, or overdue for its kill."""
        if is_running(job.runner_pid, job.runner_start):
            if job.kill_at is not None and time.time() > job.kill_at + SUPERVISOR_GRACE:
                kill_tree(job.pid, job.pid_start)
                kill_tree(job.runner_pid, job.runner_start)
                self._end(job, STOPPED, None,
                          "did not stop within its timeout; killed (its supervisor did not respond)")
            return
        killed = kill_tree(job.pid, job.pid_start)  # the command outlived its supervisor: free the GPU
        reason = ("its supervisor vanished while the command still ran (the command was killed)" if killed else
                  "its process ended without recording a result (killed, or the machine restarted)")
        last_line = next((line for line in reversed(self.tail_log(job.id, 20).splitlines()) if line.strip()), "")
        self._end(job, CRASHED, None, reason + (f"; last output: {last_line.strip()}" if last_line else ""))

    def _end(self, job: Job, status: str, exit_code: int | None, message: str) -> None:
        job.status, job.exit_code, job.message, job.ended = status, exit_code, message, time.time()
        self.store.write(job)
        event = {"type": "exit", "time": job.ended, "status": status, "exit_code": exit_code, "message": message}
        with open(self.store.own_events_path(job.id), "a", encoding="utf-8") as events:
            events.write(json.dumps(event) + "\n")
        with open(self.store.log_path(job.id), "a", encoding="utf-8") as log:
            log.write(f"[job] {time.strftime('%Y-%m-%d %H:%M:%S')} {status}: {message}\n")


def _gpu_list(needs_gpu: bool, gpus: Iterable[int] | str | None) -> list[int] | str:
    """What job.json stores for `gpus`: ALL_GPUS or sorted indices; [] for a CPU job. Raises
    JobError for anything else, and for GPUs given to a CPU job or none given to a GPU job."""
    if not needs_gpu:
        if gpus not in (None, NO_GPU, [], ()):
            raise JobError(f"job gpus {gpus!r} given for a job that needs no GPU (needs_gpu=False).")
        return []
    if gpus is None or gpus == ALL_GPUS:
        return ALL_GPUS
    indices = list(gpus) if not isinstance(gpus, str) else None
    if not indices or not all(is_gpu_index(index) for index in indices):
        raise JobError(f"job gpus must be {ALL_GPUS!r} or GPU indices (0, 1, ...), not {gpus!r}; "
                       "a job on no GPU is needs_gpu=False.")
    return sorted(set(indices))


def _source_checkout() -> str | None:
    """The folder holding this `acestep` package when it is not in site-packages (a source
    checkout run from its folder); None for an installed package, whose folder must not go on
    PYTHONPATH (it would come before the standard library)."""
    import site

    parent = Path(acestep.__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    return None if parent in installed else str(parent)


def _parse_event(line: bytes, path: Path, offset: int) -> list[dict]:
    if not line.strip():
        return []
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        event = None
    if not isinstance(event, dict):
        return [{"type": "warning", "message": f"{path}: unreadable event line at byte {offset}"}]
    return [event]
