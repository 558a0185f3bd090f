"""Training in real processes: DDP on two CPU processes (gloo) ends with the same adapter on both
ranks, and Ctrl-C stops a run cleanly. (SIGKILLs at random points, between checkpoints and inside
them, are `tests/reliability/test_crash_resume.py`.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep.training.config import TrainingConfig, apply_overrides, save_config

from .conftest import write_tensors_dir

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, tensors: Path, dit: Path, name: str, *overrides: str) -> Path:
    config = apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={tensors}", f"model.checkpoint={dit}", f"run.output_dir={tmp_path / 'runs'}",
        f"run.name={name}", "adapter.rank=4", "adapter.alpha=8", "optimizer.lr=1e-3", "optimizer.warmup_steps=2",
        "data.max_seconds=1.2", "run.accelerator=cpu", *overrides])
    return save_config(config, tmp_path / f"{name}.toml")


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "acestep.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


# checkpointing alone: re-entrant under DDP; with compile: traced into each compiled block (recompute.py)
@pytest.mark.parametrize(("checkpointing", "compile"), [("false", "false"), ("true", "false"), ("true", "true")])
def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tmp_path, tiny_dit, checkpointing, compile):
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 8)
    config = write_config(tmp_path, tensors, tiny_dit, "ddp", "run.devices=2", "run.strategy=ddp", "run.epochs=2",
                          "run.log_every_steps=1", f"run.gradient_checkpointing={checkpointing}",
                          f"run.compile={compile}",
                          "run.save_every_minutes=0.00001")  # a time-based save at each log: both ranks agree
    process = cli("train", "--config", str(config), cwd=tmp_path)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    run_dir = tmp_path / "runs" / "ddp"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    ranks = [e for e in events if e["type"] == "ranks"]
    assert len(ranks) == 1 and len(ranks[0]["checksums"]) == 2
    assert ranks[0]["checksums"][0] == ranks[0]["checksums"][1]
    start = events[0]["message"]
    assert "effective batch 2 (1 x 1 accumulation x 2 process(es))" in start
    assert ("blocks compiled by torch.compile" in start) == (compile == "true")
    assert [e["step"] for e in events if e["type"] == "log"] == list(range(1, 9))  # 8 samples / 2 ranks x 2 epochs
    timed = [e["step"] for e in events if e["type"] == "checkpoint" and "minutes since the last save" in e["message"]]
    assert timed == list(range(1, 9))
    assert final_adapter(run_dir)


def test_ctrl_c_stops_after_the_step_saves_and_exits_130(tmp_path, tiny_dit):
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 12)
    config = write_config(tmp_path, tensors, tiny_dit, "interrupted", "run.epochs=100", "run.log_every_steps=1")
    run_dir = tmp_path / "runs" / "interrupted"
    process = cli("train", "--config", str(config))
    deadline = time.time() + 300
    while '"step": 3' not in ((run_dir / "events.jsonl").read_text() if (run_dir / "events.jsonl").exists() else ""):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output  # stopped, not finished (the CLI's contract)
    assert "stopped: step" in output
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "stop"
    step = events[-1]["step"]
    assert (run_dir / "checkpoints" / f"step-{step:06d}" / "COMPLETE").is_file()
