"""Helpers shared by tests that start servers or wait for jobs, and where tests leave what a person
may want to look at (screenshots, the reliability table)."""

import os
import socket
import time
from pathlib import Path

ARTIFACTS = Path(os.environ.get("ACESTEP_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Call `condition` every `interval` seconds until it returns something true (returned), or
    fail the test after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
