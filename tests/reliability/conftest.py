"""The reliability suite's figures: each test records what it tried and what went wrong; the
records ride on the test's report to the process that prints the table at the end of the run
(tests/conftest.py, which also writes it to test-artifacts/reliability.md)."""

from __future__ import annotations

import pytest

from conftest import FIGURES_PROPERTY
from training.conftest import tensors_17, tiny_dit  # noqa: F401  (fixtures of the training runs used here)

# Recorded since the last report was made: (area, what was tried, how many, what went wrong, how many)
_pending: list[tuple[str, str, int, str, int]] = []


def record(area: str, tried: str, count: int, failed: str, failures: int) -> None:
    """Add to one row of the table (a row's counts add up over the tests that feed it)."""
    _pending.append((area, tried, count, failed, failures))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _pending:  # recorded in this phase, by the test or by a fixture it set up
        report.user_properties.append((FIGURES_PROPERTY, list(_pending)))
        _pending.clear()
    return report
