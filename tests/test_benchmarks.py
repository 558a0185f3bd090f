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


@pytest.mark.slow
def test_gpu_presets_check_trains_every_preset_and_judges_the_figures(tmp_path):
    """On CPU the script trains every preset on the tiny model (no memory figures); its judging and
    refitting, which only a GPU feeds, are checked on made-up figures."""
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_presets.py"), "--size", "tiny", "--steps", "1",
               "--refit", "--json", str(figures)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout
    from acestep.training.presets import BUILTIN_ORDER

    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in BUILTIN_ORDER}
    assert set(rows) == set(BUILTIN_ORDER) and all(row.endswith("ok") for row in rows.values())
    assert "all presets passed (CPU: steps only, no memory comparison)" in out
    import json

    stored = json.loads(figures.read_text())
    assert stored["device"] == "cpu" and [r["preset"] for r in stored["results"]] == list(BUILTIN_ORDER)
    assert all(r["steps"] == 1 and r["estimate_allocated"] > r["static"] > 0 for r in stored["results"])

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_presets
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    gib = 1024 ** 3
    made_up = []
    for static, activations, workspace in ((3, 10, 0.4), (3, 7, 0.3), (3.5, 0.3, 0.2), (3.2, 0.2, 0.1)):
        peak = (static + 1.1 * activations + 0.5 * workspace) * gib  # the GPU keeps 10% more than counted
        made_up.append({"preset": "p", "min_vram_gib": 16, "steps": 2, "all_steps": True, "peak_allocated": peak,
                        "peak_reserved": 1.08 * peak, "static": static * gib, "activations": activations * gib,
                        "workspace": workspace * gib, "estimate_allocated": peak, "saved_measured": 1.0,
                        "estimate_kept_math": 1.0})
    fitted = gpu_presets.refit(made_up)
    assert fitted["activation_scale"] == pytest.approx(1.1, abs=1e-3)
    assert fitted["workspace_scale"] == pytest.approx(0.5, abs=1e-2)
    assert fitted["allocator_fraction"] == pytest.approx(0.08) and fitted["max_error_after_refit"] < 1e-6
    assert gpu_presets.judge(made_up[2]) == []
    too_big = {**made_up[0], "min_vram_gib": 8}
    assert gpu_presets.judge(too_big) == [f"peak {too_big['peak_allocated'] / gib:.2f} GiB > 7.5 GiB"]
    off = {**made_up[2], "estimate_allocated": 1.2 * made_up[2]["peak_allocated"]}
    assert gpu_presets.judge(off) == ["estimate off by +20%"]
