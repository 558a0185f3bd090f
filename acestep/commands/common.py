"""Helpers shared by the command modules: option builders, exit codes, Ctrl+C handling."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

EXIT_PARTIAL = 2  # the batch finished but some files failed (listed on stderr)
EXIT_STOPPED = 130  # stopped on request (Ctrl+C); finished work is kept


def checkpoints_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints-dir", type=Path, default=None,
        help="folder holding the model folders "
             "(default: $ACESTEP_CHECKPOINTS_DIR, else checkpoints/ in the project folder)",
    )


def print_failures(failures) -> None:
    for failure in failures:
        print(f"  failed: {failure.path}: {failure.reason}", file=sys.stderr)


@contextlib.contextmanager
def stop_on_ctrl_c(what: str):
    """While active, the first Ctrl+C asks for a stop after `what` (finished work is kept) and a
    second one aborts at once. Yields the function batch jobs poll for the request."""
    requested = []

    def on_signal(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print(f"\nStopping after {what} (Ctrl+C again to abort at once)...", file=sys.stderr, flush=True)

    previous = {signum: signal.signal(signum, on_signal) for signum in interrupt_signals()}
    try:
        yield lambda: bool(requested)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupt_signals() -> tuple[int, ...]:
    """The signals that mean "stop": Ctrl+C, and on Windows also Ctrl+Break (SIGBREAK), which is
    what a console program started in its own process group can be sent."""
    return (signal.SIGINT,) + ((signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ())


def format_clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
