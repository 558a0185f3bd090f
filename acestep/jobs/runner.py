"""The job supervisor: `python -m acestep.jobs.runner JOBS_ROOT JOB_ID`.

The job manager starts one per job, detached from the app (see `acestep.jobs.process`). It
starts the job's command, copies its stdout and stderr into log.txt (an `[i/n] ...` line also
becomes a `progress` event in the job's events.jsonl), carries out a stop request (interrupt,
then kill after the job's timeout), records the exit status as the job's final status, and then
starts the next queued job, so a queue keeps moving while no app is open.

It is the only process that waits for the command, so it alone knows its exit status. If the
supervisor itself is killed, the next poll finds it gone, kills what is left of the command and
marks the job crashed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from acestep.commands.common import EXIT_PARTIAL, EXIT_STOPPED
from acestep.jobs.process import (
    WINDOWS,
    WINDOWS_CTRL_EXIT,
    describe_exit,
    interrupt,
    kill_leftovers,
    kill_tree,
    process_start,
    spawn,
)
from acestep.jobs.store import (
    ACTIVE,
    CRASHED,
    DONE,
    FAILED,
    STOPPED,
    STOPPING,
    Job,
    JobError,
    JobStore,
)

CHECK_INTERVAL = 0.2  # seconds between looks at job.json for a stop request
TRANSIENT_INTERVAL = 1.0  # at most one progress-bar update ('\r' line) per second goes to the log
READER_JOIN_SECONDS = 5.0  # a grandchild may keep the pipes open after the command exits
PROGRESS_LINE = re.compile(r"^\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]\s*(.*)$")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def final_status(code: int, stop_requested: bool, killed: bool, last_error: str, last_output: str) -> tuple[str, str]:
    """The job's final (status, message) from the command's exit code (see the CLI's contract:
    0 ok, 1 user error, 2 finished with some files failed, 130 stopped on request)."""
    if killed:
        return STOPPED, f"did not stop within its timeout; killed ({describe_exit(code)})"
    if code == 0:
        return (STOPPED, last_output or "stopped on request") if stop_requested else (DONE, last_output)
    if code in (EXIT_STOPPED, WINDOWS_CTRL_EXIT, -signal.SIGINT):
        return STOPPED, last_output or "stopped on request"
    if code < 0:
        hint = " (by the out-of-memory killer, or by hand)" if code == -getattr(signal, "SIGKILL", 9) else ""
        return CRASHED, describe_exit(code) + hint + (f"; last error: {last_error}" if last_error else "")
    if code == EXIT_PARTIAL:
        return DONE, "finished, but some files failed (listed in the log)" + (f": {last_output}" if last_output else "")
    return FAILED, last_error or describe_exit(code)


def split_output(stream) -> Iterator[tuple[bytes, bool]]:
    """(line, transient) pairs from a binary stream; a line ended by a lone '\\r' is a progress
    bar's update (transient). A '\\r' at the end of a read waits for the next one: it may be half
    of '\\r\\n'."""
    pending = b""
    while chunk := stream.read1(65536):
        pending += chunk
        start = 0
        for match in _LINE_END.finditer(pending):
            if match.group() == b"\r" and match.end() == len(pending):
                break
            yield pending[start:match.start()], match.group() == b"\r"
            start = match.end()
        pending = pending[start:]
    if pending.rstrip(b"\r"):
        yield pending.rstrip(b"\r"), False


class JobOutput:
    """The job's log.txt and events.jsonl, appended to by the output threads and the supervisor;
    every line is flushed at once, so a reader never sees half a line."""

    def __init__(self, log_path: Path, events_path: Path):
        self._lock = threading.Lock()
        self._log = open(log_path, "ab")
        self._events = open(events_path, "ab")
        self.last = {"stdout": "", "stderr": "", "error": ""}

    def line(self, text: str, stream: str | None = None) -> None:
        with self._lock:
            self._log.write(text.encode("utf-8", "replace") + b"\n")
            self._log.flush()
            if stream and text.strip():
                self.last[stream] = text.strip()
                if stream == "stderr" and text.startswith("error:"):
                    self.last["error"] = text.strip()

    def note(self, text: str) -> None:
        self.line(f"[job] {time.strftime('%Y-%m-%d %H:%M:%S')} {text}")

    def event(self, kind: str, **fields) -> None:
        import json

        payload = json.dumps({"type": kind, "time": time.time(), **fields}, default=str)
        with self._lock:
            self._events.write(payload.encode("utf-8") + b"\n")
            self._events.flush()

    def copy(self, stream, name: str) -> None:
        """Copy one of the command's output streams until it closes."""
        last_transient = 0.0
        for raw, transient in split_output(stream):
            text = raw.decode("utf-8", "replace").rstrip()
            if transient:
                if not text or time.monotonic() - last_transient < TRANSIENT_INTERVAL:
                    continue
                last_transient = time.monotonic()
            self.line(text, name)
            match = PROGRESS_LINE.match(text)
            if match:
                self.event("progress", index=int(match[1]), total=int(match[2]), message=match[3].strip())

    def close(self) -> None:
        self._log.close()
        self._events.close()


class Supervisor:
    """Runs one job's command to its end and records the result."""

    def __init__(self, store: JobStore, job_id: str):
        self.store = store
        self.job_id = job_id
        self.output = JobOutput(store.log_path(job_id), store.own_events_path(job_id))
        self.signalled: int | None = None

    def run(self) -> None:
        child = None
        try:
            child = self._start()
            if child is not None:
                code, killed = self._wait(child)
                self._finish(code, killed)
        except Exception as exc:  # record it: a job must never stay "running" with no one to end it
            self.output.note("the job's supervisor failed:\n" + traceback.format_exc())
            if child is not None and child.poll() is None:
                kill_tree(child.pid, process_start(child.pid))
            self._record(CRASHED, None, f"the job's supervisor failed: {type(exc).__name__}: {exc}")
        finally:
            self.output.close()

    def _start(self) -> subprocess.Popen | None:
        with self.store.lock():
            job = self.store.read(self.job_id)
            # (Not a pid comparison: on Windows a venv's python.exe is a launcher with a pid of its own.)
            if job.pid is not None or job.status not in ACTIVE:
                self.output.note(f"supervisor {os.getpid()} exits: the job is {job.status}"
                                 + (f", its command already started (pid {job.pid})" if job.pid else ""))
                return None
            if job.status == STOPPING:
                self._set_final(job, STOPPED, None, "stopped before its command started")
                return None
            if job.stop_file:  # a STOP file left from an earlier run would stop this one at once
                Path(job.stop_file).unlink(missing_ok=True)
            env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1"}
            env.setdefault("PYTHONIOENCODING", "utf-8")
            try:
                child = spawn(job.argv, job.cwd or None, env, subprocess.PIPE, subprocess.PIPE)
            except OSError as exc:
                self._set_final(job, FAILED, None, f"cannot start {job.argv[0]}: {exc.strerror or exc}")
                return None
            job.pid, job.pid_start = child.pid, process_start(child.pid)
            self.store.write(job)
        self.output.note(f"started (pid {child.pid}): {shlex.join(job.argv)}".replace("\n", "\\n"))
        self.output.event("start", pid=child.pid, argv=job.argv)
        return child

    def _wait(self, child: subprocess.Popen) -> tuple[int, bool]:
        """Wait for the command, carrying out stop requests; (exit code, killed by us)."""
        readers = [threading.Thread(target=self.output.copy, args=(stream, name), daemon=True)
                   for stream, name in ((child.stdout, "stdout"), (child.stderr, "stderr"))]
        for reader in readers:
            reader.start()
        start = process_start(child.pid)
        interrupted = killed = asked = stop_written = False
        while True:
            try:
                code = child.wait(timeout=CHECK_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.signalled is not None and not asked:  # the supervisor was told to end: stop the job
                asked = True
                self.output.note(f"supervisor received {signal.Signals(self.signalled).name}; stopping the job")
                from acestep.jobs.manager import JobManager

                JobManager(self.store.root).stop(self.job_id)
            job = self._peek()
            if job is None:
                continue
            if job.status == STOPPING and not interrupted:
                interrupted = True
                if WINDOWS and job.stop_file:  # Ctrl+Break would end train before it saves; STOP does it cleanly
                    self.output.note(f"stop requested: waiting for the command to see {job.stop_file}")
                else:
                    interrupt(child.pid)
                    self.output.note("stop requested: sent " + ("Ctrl+Break" if WINDOWS else "SIGINT"))
            if job.status == STOPPING and not stop_written:
                stop_written = self._write_stop_file(job)
            if job.kill_at is not None and time.time() >= job.kill_at and not killed:
                killed = kill_tree(child.pid, start)
                self.output.note("the stop timeout passed: killed the command and its processes")
        kill_leftovers(child.pid)  # the command is its group's leader (its own session)
        for reader in readers:
            reader.join(READER_JOIN_SECONDS)
        return code, killed

    def _write_stop_file(self, job: Job) -> bool:
        """Create the job's STOP file once its folder exists (a train run makes its folder after
        loading; creating it earlier would make the folder look like an old run). True when done
        or when the job has none."""
        if not job.stop_file:
            return True
        path = Path(job.stop_file)
        if not path.parent.is_dir():
            return False
        try:
            path.write_text(f"stop requested by the job manager for job {job.id}\n", encoding="utf-8")
        except OSError as exc:
            self.output.note(f"stop requested: cannot write {path} ({exc.strerror or exc})")
        else:
            self.output.note(f"stop requested: wrote {path}")
        return True

    def _peek(self) -> Job | None:
        try:
            return self.store.read(self.job_id)
        except JobError:  # the file is being replaced on Windows, or was damaged: look again next time
            return None

    def _finish(self, code: int, killed: bool) -> None:
        job = self.store.read(self.job_id)
        if job.stop_file:
            Path(job.stop_file).unlink(missing_ok=True)
        last = self.output.last
        status, message = final_status(code, job.stop_requested is not None, killed,
                                       last["error"] or last["stderr"], last["stdout"])
        self.output.note(f"{status}: {describe_exit(code)}" + (f" ({message})" if message else ""))
        self.output.event("exit", status=status, exit_code=code, message=message)
        self._record(status, code, message)

    def _record(self, status: str, code: int | None, message: str) -> None:
        with self.store.lock():
            job = self.store.read(self.job_id)
            if not job.finished:
                self._set_final(job, status, code, message)

    def _set_final(self, job: Job, status: str, code: int | None, message: str) -> None:
        """Write the final state (the caller holds the lock)."""
        job.status, job.exit_code, job.message, job.ended = status, code, message, time.time()
        self.store.write(job)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m acestep.jobs.runner JOBS_ROOT JOB_ID", file=sys.stderr)
        return 2
    store = JobStore(args[0])
    supervisor = Supervisor(store, args[1])

    def on_signal(signum, frame):  # a Python handler, not SIG_IGN: ignored signals stay ignored in the command
        supervisor.signalled = signum

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    supervisor.run()
    try:
        from acestep.jobs.manager import JobManager

        JobManager(store.root).poll()  # start the next queued job
    except Exception:
        traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
