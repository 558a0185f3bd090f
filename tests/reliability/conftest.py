"""The reliability suite's figures: each test records what it tried and what went wrong, and the
table is printed at the end of the pytest run (and written to test-artifacts/reliability.md)."""

from __future__ import annotations

from pathlib import Path

from training.conftest import tensors_17, tiny_dit  # noqa: F401  (fixtures of the training runs used here)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# area -> (what was tried, how many, what went wrong, how many)
FIGURES: dict[str, list] = {}


def record(area: str, tried: str, count: int, failed: str, failures: int) -> None:
    """Add to one row of the table (a row's counts add up over the tests that feed it)."""
    row = FIGURES.setdefault(area, [tried, 0, failed, 0])
    row[1] += count
    row[3] += failures


def figures_table() -> list[str]:
    lines = ["| area | tried | count | failed | count |", "|---|---|---|---|---|"]
    lines += [f"| {area} | {tried} | {count} | {failed} | {failures} |"
              for area, (tried, count, failed, failures) in FIGURES.items()]
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    if not FIGURES:
        return
    lines = figures_table()
    terminalreporter.section("reliability figures")
    for line in lines:
        terminalreporter.write_line(line)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
