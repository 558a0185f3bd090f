"""The operating-system side of jobs: start a process detached from the app, tell whether a
recorded process is still the same one, interrupt it, kill it with everything it started.

POSIX: every job process gets its own session (`start_new_session`), so the app's terminal,
its Ctrl+C and its exit never reach it; its process group id is its pid, and a kill takes the
whole group (DataLoader workers, DDP ranks). A stop sends SIGINT to the command's process only,
the signal its Ctrl+C handlers expect (the group would also interrupt its worker processes).

Windows (written from the documentation; nothing here tests it): the supervisor starts with
CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW, so it has a hidden console of its own that closing
the app's console does not reach; the command starts in a new process group on that console, and
an interrupt is CTRL_BREAK_EVENT to the command's group (Python
sees SIGBREAK, whose default ends the process at once with 0xC000013A: the CLI installs handlers
for SIGINT only, so a Windows stop is clean only for train, through its STOP file); a kill ends
the process tree through psutil.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

WINDOWS = sys.platform == "win32"
WINDOWS_CTRL_EXIT = 0xC000013A  # STATUS_CONTROL_C_EXIT: ended by Ctrl+C / Ctrl+Break


def process_start(pid: int | None) -> float | None:
    """When `pid` started, as an identifier to compare (never to display): clock ticks since boot
    from /proc/<pid>/stat on Linux (exact and the same from every process), psutil's creation time
    elsewhere. None when there is no such process or it has exited (a zombie)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        after_name = text[text.rindex(")") + 2:].split()  # the name may hold spaces and ')'
        state, start_ticks = after_name[0], after_name[19]  # fields 3 and 22 of proc(5)
        return None if state in ("Z", "X") else float(start_ticks)
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None


def is_running(pid: int | None, start: float | None) -> bool:
    """True when `pid` is alive and is the process recorded with `start` (not a reused pid)."""
    now = process_start(pid)
    if now is None:
        return False
    return start is None or abs(now - start) < 0.01


def spawn(argv: list[str], cwd: str | Path, env: dict[str, str], stdout=None, stderr=None,
          own_console: bool = False) -> subprocess.Popen:
    """Start `argv` in its own session (POSIX) or process group (Windows; with `own_console` also a
    hidden console of its own, else it shares the caller's, which Ctrl+Break needs), stdin closed,
    output to the given files or pipes. Raises OSError when it cannot start."""
    options: dict = {}
    if WINDOWS:
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | (
            subprocess.CREATE_NO_WINDOW if own_console else 0)
    else:
        options["start_new_session"] = True
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            **options)


def interrupt(pid: int) -> None:
    """Ask the process to stop as Ctrl+C would: SIGINT (POSIX), CTRL_BREAK_EVENT (Windows)."""
    try:
        os.kill(pid, signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGINT)
    except (ProcessLookupError, PermissionError, OSError):
        pass  # already gone


def kill_tree(pid: int | None, start: float | None) -> bool:
    """Kill the process recorded as (`pid`, `start`) and what it started: its process group on
    POSIX (it is the group's leader), its psutil tree on Windows. False when it was already gone."""
    if not is_running(pid, start):
        return False
    if WINDOWS:
        import psutil

        try:
            root = psutil.Process(pid)
            for process in [*root.children(recursive=True), root]:
                process.kill()
        except psutil.NoSuchProcess:
            pass
        return True
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def kill_leftovers(group: int) -> None:
    """After a command has exited and been reaped, kill what it left in its process group (a
    worker still holding the GPU or the output pipes). POSIX only: a group id is not reused while
    the group has members, so this never reaches another program; on Windows nothing is done."""
    if WINDOWS:
        return
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int) -> str:
    """'exit status 1', 'killed by signal SIGKILL', or Windows' Ctrl+C exit."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == WINDOWS_CTRL_EXIT:
        return "ended by Ctrl+Break"
    return f"exit status {code}"
