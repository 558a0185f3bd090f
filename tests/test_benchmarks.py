"""The benchmark scripts run and print their figures (tiny sizes: this checks the code, not speed)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_step_benchmark_prints_both_loops_and_the_overhead():
    command = [sys.executable, str(ROOT / "benchmarks" / "training_step.py"), "--size", "tiny", "--seconds", "2",
               "--steps", "2", "--rounds", "2", "--warmup", "1"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "bare PyTorch loop" in out and "trainer step" in out
    assert "trainer overhead:" in out and "precision 32-true" in out
