"""Job state on disk: one folder per job under the jobs root, and one lock that serialises changes.

    <root>/lock                   lock file: every state change holds it (flock on POSIX,
                                  msvcrt.locking on Windows); the OS drops it when its holder dies
    <root>/<job-id>/job.json      the job (`Job.to_json`), replaced atomically on every change
    <root>/<job-id>/log.txt       the command's stdout and stderr line by line, and `[job]` lines
    <root>/<job-id>/events.jsonl  the supervisor's events: start, progress ([i/n] lines), exit

Readers (every browser's timer) read job.json without the lock: a file replaced atomically is
always whole. Writers take the lock, re-read, change and write, so two processes changing jobs at
once (two browsers, the supervisor of a finishing job) never lose a change.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from acestep.errors import JobError
from acestep.files import read_json_object, try_lock_file, unlock_file, write_atomically
from acestep.jobs.gpus import ALL_GPUS, NO_GPU, GpuSet, is_gpu_index

FORMAT_VERSION = 1
JOB_FILE = "job.json"
LOG_FILE = "log.txt"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = "lock"

QUEUED, RUNNING, STOPPING = "queued", "running", "stopping"
DONE, FAILED, STOPPED, CRASHED, CANCELLED = "done", "failed", "stopped", "crashed", "cancelled"
ACTIVE = (RUNNING, STOPPING)  # a process exists (or did, until a poll notices it is gone)
FINISHED = (DONE, FAILED, STOPPED, CRASHED, CANCELLED)
STATUSES = (QUEUED, *ACTIVE, *FINISHED)

_KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_CACHE_AFTER_SECONDS = 2.0  # only files this old are cached: file times are coarser than the writes




@dataclass
class Job:
    """One job as stored in job.json. Times are seconds since the epoch; `pid_start` and
    `runner_start` identify the processes (see `acestep.jobs.process.process_start`) so a reused
    process id is never taken for the job."""

    id: str
    kind: str
    argv: list[str]
    needs_gpu: bool
    status: str = QUEUED
    gpus: list[int] | str = ALL_GPUS  # a GPU job's CUDA indices, or "all" (see acestep.jobs.gpus); [] for a CPU job
    label: str = ""
    owner: str = ""
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    events_path: str = ""  # what read_events reads: a train run's events.jsonl, else the job's own
    stop_file: str | None = None  # created on stop (a train run's STOP file), removed when the job ends
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None  # the command's process
    pid_start: float | None = None
    runner_pid: int | None = None  # the supervisor that waits for it and records the result
    runner_start: float | None = None
    exit_code: int | None = None
    message: str = ""  # one line: the error, the last output line, or why it crashed
    stop_requested: float | None = None
    kill_at: float | None = None  # after this time a stopping job is killed
    version: int = FORMAT_VERSION

    @property
    def finished(self) -> bool:
        """Ended one way or another; a job that is not finished is queued or running."""
        return self.status in FINISHED

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def gpu_set(self) -> GpuSet:
        """The GPUs the job takes: a frozenset of CUDA indices, ALL_GPUS, or the empty set (a CPU job)."""
        if not self.needs_gpu:
            return NO_GPU
        return ALL_GPUS if self.gpus == ALL_GPUS else frozenset(self.gpus)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: Path | str) -> Job:
        """A Job from a job.json object; fields a newer version added are ignored. Raises
        JobError naming `source` when a required field is missing or the status is unknown."""
        missing = [name for name in ("id", "kind", "argv", "needs_gpu", "status") if name not in data]
        if missing:
            raise JobError(f"{source}: not a job file (missing {', '.join(missing)}).")
        if data["status"] not in STATUSES:
            raise JobError(f"{source}: unknown job status {data['status']!r} (expected one of {', '.join(STATUSES)}).")
        gpus = data.get("gpus", ALL_GPUS)  # jobs stored before jobs recorded their GPUs: every GPU
        if gpus != ALL_GPUS and not (isinstance(gpus, list) and all(is_gpu_index(index) for index in gpus)):
            raise JobError(f"{source}: gpus must be \"{ALL_GPUS}\" or a list of GPU indices, found {gpus!r}.")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class JobStore:
    """The jobs root: reading, writing and listing job folders, and the state lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self._cache: dict[str, tuple[tuple, Job]] = {}

    # ---- paths -----------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        """The folder of `job_id`. Raises JobError for a malformed id (ids come from browsers)."""
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise JobError(f"{job_id!r} is not a job id (letters, digits, '-' and '_').")
        return self.root / job_id

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / LOG_FILE

    def own_events_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / EVENTS_FILE

    # ---- reading and writing -----------------------------------------------------------------------
    def new_id(self, kind: str) -> str:
        """A fresh, sortable id: `<date>-<time>-<kind>-<6 hex>`. Raises JobError for a bad kind."""
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise JobError(f"job kind {kind!r}: use lower-case letters, digits and '-' (e.g. 'train').")
        while True:
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
            if not self.job_dir(job_id).exists():
                return job_id

    def read(self, job_id: str) -> Job:
        """The job as on disk now. Raises JobError when there is no such job or its file is broken."""
        path = self.job_dir(job_id) / JOB_FILE
        data = _retry_on_windows(lambda: read_json_object(path, JobError, f"No job {job_id!r} in {self.root}."))
        return Job.from_dict(data, path)

    def write(self, job: Job) -> None:
        """Replace the job's job.json atomically (the caller holds the lock)."""
        path = self.job_dir(job.id) / JOB_FILE
        _retry_on_windows(lambda: write_atomically(path, job.to_json(), JobError, "job state"))

    def job_ids(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(entry.name for entry in entries if entry.is_dir() and _JOB_ID.match(entry.name))

    def read_all(self, fresh: bool = False) -> list[Job]:
        """Every readable job, in submission order. Jobs whose file is unreadable are left out
        (`get` names the problem). Files unchanged for a while come from a cache unless `fresh`."""
        jobs = []
        for job_id in self.job_ids():
            path = self.root / job_id / JOB_FILE
            try:
                stat = path.stat()
            except OSError:  # a folder being created or removed
                continue
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(job_id)
            if not fresh and cached is not None and cached[0] == key:
                jobs.append(cached[1])
                continue
            try:
                job = self.read(job_id)
            except JobError:
                continue
            if time.time() - stat.st_mtime > _CACHE_AFTER_SECONDS:
                self._cache[job_id] = (key, job)
            jobs.append(job)
        return sorted(jobs, key=lambda job: (job.created, job.id))

    def forget(self, job_id: str) -> None:
        self._cache.pop(job_id, None)

    # ---- the lock --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the jobs lock (exclusive across threads and processes). Each use opens the lock
        file anew, so two threads of one process exclude each other too; never nest it. Raises
        JobError when another holder keeps it longer than `timeout` seconds."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        with open(path, "a+b") as handle:
            deadline = time.monotonic() + timeout
            delay = 0.002
            while not try_lock_file(handle):
                if time.monotonic() > deadline:
                    raise JobError(f"{path}: another process has held the jobs lock for over {timeout:g} s; "
                                   "if it hangs, end it (the lock is released when it exits).")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            try:
                yield
            finally:
                unlock_file(handle)


def _retry_on_windows(action, attempts: int = 20):
    """Run `action`; on Windows retry while a reader holds the file open (replacing a file that is
    open for reading is refused there). POSIX never raises PermissionError for this."""
    for attempt in range(attempts):
        try:
            return action()
        except (PermissionError, JobError) as exc:
            transient = sys.platform == "win32" and (isinstance(exc, PermissionError) or "Permission" in str(exc))
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")
