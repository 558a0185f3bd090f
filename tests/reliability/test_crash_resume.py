"""Crash and resume: 20 training runs of the tiny model, each killed with SIGKILL at a random point
(inside a step, inside a checkpoint write or deletion, inside a preview, or at a random moment from
outside), are resumed with `acestep-trainer train --resume`. Each resume starts from the newest checkpoint
that was complete when the run died (never from the half-written one) and ends with the adapter
bit-identical to an uninterrupted run of the same seed. A checkpoint write that fails on a full
disk stops the run with a clear message and leaves the previous checkpoint usable.

The kill points are drawn from a seeded generator (`ACESTEP_CRASH_SEED`, default 2026, printed),
so a failure can be replayed; `tests/reliability/kill_at.py` arms them inside the real CLI. Each run
is its own process, forked from one that imported the package once (`kill_at.start_run`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from training.conftest import write_tensors_dir
from training.test_loop import adapter_tensors, events
from training.test_processes import write_config as write_training_config

from .conftest import record
from .kill_at import Run, start_run

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("ACESTEP_CRASH_SEED", "2026"))
RUNS = 20
# 8 samples, accumulation 2: 4 optimizer steps an epoch, 24 in all; a checkpoint every 3 steps
# (8 of them, the last at the end), previews of 2 strengths every 5 steps (4 previews, 8 files).
# The adapters are the weights' moving average (ema_decay), which a resume must continue exactly too.
# (on top of the CPU process tests' settings: rank 4, lr 1e-3, 1.2 s crops, CPU)
RUN_SETTINGS = ("adapter.dropout=0.1", "optimizer.gradient_accumulation=2", "run.epochs=6", "run.save_every_steps=3",
                "run.save_every_epochs=0", "run.keep_checkpoints=2", "run.log_every_steps=1",
                "run.preview_every_steps=5", "run.preview_caption=mystyle, lofi hip hop", "run.preview_seconds=0.4",
                "run.preview_strengths=[0, 1]", "optimizer.ema_decay=0.9")
# phase -> the calls of its function a kill may land on: all after the first complete checkpoint
# (step 3, the 6th batch), so that there is one to resume from; a prune deletes from its 3rd call on.
CALLS = {"step": range(7, 49), "optimizer": range(4, 25), "checkpoint-adapter": range(2, 9),
         "checkpoint-state": range(2, 9), "checkpoint-prune": range(2, 9), "checkpoint-delete": range(3, 9),
         "preview": range(1, 9), "outside": range(4, 19)}
PHASES = ("step", "optimizer", "checkpoint-adapter", "checkpoint-state", "checkpoint-prune", "checkpoint-delete",
          "preview", "outside")


@dataclass
class Scenario:
    index: int
    phase: str
    call: int  # the call of the phase's function that dies; for "outside", the step after which to kill
    delay: float = 0.0  # "outside": seconds to wait after seeing that step

    @property
    def name(self) -> str:
        return f"kill-{self.index:02d}-{self.phase}-{self.call}"


@dataclass
class Outcome:
    killed_status: int | None = None
    complete_at_kill: list[str] = field(default_factory=list)
    partial_at_kill: list[str] = field(default_factory=list)
    resumed_from: str = ""
    resume_status: int | None = None
    resume_output: str = ""
    identical: bool = False
    leftovers: list[str] = field(default_factory=list)


def draw_scenarios(seed: int) -> list[Scenario]:
    rng = random.Random(seed)
    scenarios = []
    for index in range(RUNS):
        phase = PHASES[index % len(PHASES)]  # every phase about equally often
        scenarios.append(Scenario(index, phase, rng.choice(CALLS[phase]), round(rng.uniform(0, 0.15), 3)))
    return scenarios


def write_config(root: Path, tensors: Path, dit: Path, name: str) -> Path:
    return write_training_config(root, tensors, dit, name, *RUN_SETTINGS)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_folders(run_dir: Path) -> tuple[list[str], list[str]]:
    """(complete checkpoints, other entries: temporary or partial folders) of a run, by name."""
    root = run_dir / "checkpoints"
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    complete = [name for name in entries if (root / name / "COMPLETE").is_file() and name.startswith("step-")]
    return complete, [name for name in entries if name not in complete]


def wait_for_step(process: Run, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    path = run_dir / "events.jsonl"
    while True:
        text = path.read_text() if path.exists() else ""
        if any(line.startswith('{"type": "log"') and json.loads(line).get("step", 0) >= step
               for line in text.splitlines() if line.endswith("}")):
            return
        assert process.poll() is None, f"the run ended before step {step}: {process.output()}"
        assert time.time() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.01)


def play(scenario: Scenario, root: Path, tensors: Path, dit: Path, reference: Path) -> Outcome:
    """Kill one run as the scenario says, look at what is on disk, resume it, compare."""
    outcome = Outcome()
    config = write_config(root, tensors, dit, scenario.name)
    run_dir = root / "runs" / scenario.name
    logs = root / "logs"
    if scenario.phase == "outside":
        process = start_run("none", 0, logs / f"{scenario.name}.log", "train", "--config", str(config))
        wait_for_step(process, run_dir, scenario.call)
        time.sleep(scenario.delay)
        process.kill()
    else:
        process = start_run(scenario.phase, scenario.call, logs / f"{scenario.name}.log", "train", "--config",
                          str(config))
    killed_output = process.communicate(timeout=600)
    outcome.killed_status = process.returncode
    outcome.complete_at_kill, outcome.partial_at_kill = checkpoint_folders(run_dir)
    if outcome.killed_status != -signal.SIGKILL:
        outcome.resume_output = killed_output
        return outcome
    resumed = start_run("none", 0, logs / f"{scenario.name}-resume.log", "train", "--resume", str(run_dir))
    outcome.resume_output = resumed.communicate(timeout=600)
    outcome.resume_status = resumed.returncode
    starts = [e["message"] for e in events(run_dir) if e["type"] == "start" and "resumed from" in e["message"]]
    outcome.resumed_from = Path(starts[-1].split("resumed from ", 1)[1]).name if starts else ""
    if resumed.returncode == 0:
        outcome.identical = (same(adapter_tensors(run_dir / "final"), adapter_tensors(reference / "final"))
                             and same(adapter_tensors(run_dir / "best"), adapter_tensors(reference / "best")))
    outcome.leftovers = checkpoint_folders(run_dir)[1]
    return outcome


@pytest.fixture(scope="module")
def crash_runs(tmp_path_factory, tiny_checkpoints):
    """The reference run, then every scenario, two at a time (one CPU thread each)."""
    root = tmp_path_factory.mktemp("crash")
    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(root / "tensors", dit, 8)
    (root / "logs").mkdir()
    straight = start_run("none", 0, root / "logs" / "straight.log", "train", "--config",
                       str(write_config(root, tensors, dit, "straight")))
    output = straight.communicate(timeout=600)
    assert straight.returncode == 0, output
    reference = root / "runs" / "straight"
    scenarios = draw_scenarios(SEED)
    print(f"\ncrash scenarios (ACESTEP_CRASH_SEED={SEED}): " + ", ".join(s.name for s in scenarios))
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda s: play(s, root, tensors, dit, reference), scenarios))
    results = dict(zip([s.name for s in scenarios], outcomes, strict=True))
    exact = sum(o.identical and o.resume_status == 0 for o in outcomes)
    record("crash and resume", "runs killed with SIGKILL", sum(o.killed_status == -signal.SIGKILL for o in outcomes),
           "not resumed bit-identical", RUNS - exact)
    return results, reference, tensors


def test_the_scenarios_cover_every_kind_of_kill_point():
    phases = [s.phase for s in draw_scenarios(SEED)]
    assert len(phases) == RUNS and set(phases) == set(PHASES)


@pytest.mark.parametrize("scenario", draw_scenarios(SEED), ids=lambda s: s.name)
def test_a_killed_run_resumes_from_its_last_complete_checkpoint_and_ends_bit_identical(crash_runs, scenario):
    results, _, _ = crash_runs
    outcome = results[scenario.name]
    assert outcome.killed_status == -signal.SIGKILL, f"the run was not killed:\n{outcome.resume_output}"
    assert outcome.complete_at_kill, "no complete checkpoint at the kill"
    if scenario.phase in ("checkpoint-adapter", "checkpoint-state"):
        # the kill landed inside a write: its half-written folder is there, hidden, and not complete
        assert any(name.startswith(".step-") and ".tmp-" in name for name in outcome.partial_at_kill), outcome
    if scenario.phase == "checkpoint-delete":
        # the kill landed inside the deletion of an old checkpoint: what is left of it is hidden
        assert outcome.partial_at_kill and all(name.startswith(".") for name in outcome.partial_at_kill), outcome
    assert outcome.resume_status == 0, outcome.resume_output
    assert outcome.resumed_from == outcome.complete_at_kill[-1], "the resume did not start at the newest complete one"
    assert outcome.identical, "the resumed run's final or best adapter differs from the uninterrupted run's"
    assert not outcome.leftovers, f"temporary folders left in checkpoints/: {outcome.leftovers}"


def test_a_full_disk_during_a_checkpoint_stops_the_run_clearly_and_the_previous_one_resumes(
        crash_runs, tmp_path, tiny_checkpoints):
    _, reference, tensors = crash_runs
    dit = tiny_checkpoints / "acestep-v15-turbo"
    run_dir = tmp_path / "runs" / "full"
    # the 4th checkpoint (step 12) fails after its adapter is written
    process = start_run("disk-full", 4, tmp_path / "full.log", "train", "--config",
                      str(write_config(tmp_path, tensors, dit, "full")))
    output = process.communicate(timeout=600)
    assert process.returncode == 1, output
    assert "error: The disk is full: could not write" in output and "step-000012" in output
    assert "The previous checkpoints are intact; free some space and resume the run." in output
    assert checkpoint_folders(run_dir) == (["step-000006", "step-000009"], [])
    assert events(run_dir)[-1]["type"] == "error"
    resumed = start_run("none", 0, tmp_path / "full-resume.log", "train", "--resume", str(run_dir))
    output = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert same(adapter_tensors(run_dir / "final"), adapter_tensors(reference / "final"))
    record("full disk", "checkpoint writes failed with ENOSPC", 1, "previous checkpoint not usable", 0)
