"""Out of GPU memory inside a step (simulated: CPU only here): the run stops with the estimate and
the settings that would fit, saves the state where the accumulation group began, and a resume
from it ends bit-identical to a run that never ran out."""

from pathlib import Path

import pytest
import torch

from acestep.errors import TrainingError
from acestep.training import session as session_module
from acestep.training.loop import train

from training.test_loop import adapter_tensors, events, make_config

from .conftest import record


def test_an_out_of_memory_step_saves_the_state_and_a_resume_matches_an_uninterrupted_run(
        tmp_path, tensors_17, tiny_dit, monkeypatch):
    overrides = ("optimizer.gradient_accumulation=3", "run.epochs=2")
    straight = train(make_config(tmp_path / "straight", tensors_17, tiny_dit, *overrides))

    config = make_config(tmp_path / "oom", tensors_17, tiny_dit, *overrides)
    real_batch_loss = session_module.TrainingSession.batch_loss
    calls = {"n": 0}

    def batch_loss(self, batch, generator):
        calls["n"] += 1
        if calls["n"] == 14:  # the 2nd batch of an accumulation group, in the 5th group
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_batch_loss(self, batch, generator)

    monkeypatch.setattr(session_module.TrainingSession, "batch_loss", batch_loss)
    with pytest.raises(TrainingError) as stopped:
        train(config)
    message = str(stopped.value)
    run_dir = Path(config.run.output_dir) / "run"
    assert "Out of GPU memory in the step after step 4 (CUDA out of memory. Tried to allocate 2.00 GiB)" in message
    assert "The estimate for these settings is 0.5" in message  # the tiny model's own shapes
    assert f"--resume {run_dir}" in message
    assert (run_dir / "checkpoints" / "step-000004" / "COMPLETE").is_file()
    kinds = [(e["type"], e.get("message", "")) for e in events(run_dir)]
    assert ("checkpoint", f"out of memory: {run_dir / 'checkpoints' / 'step-000004'}") in kinds
    assert kinds[-1][0] == "error"

    monkeypatch.setattr(session_module.TrainingSession, "batch_loss", real_batch_loss)
    resumed = train(config, resume=run_dir)
    assert resumed.status == "completed" and resumed.step == straight.step
    a, b = adapter_tensors(straight.run_dir / "final"), adapter_tensors(resumed.run_dir / "final")
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record("out of memory", "steps that ran out of memory", 1, "not resumed bit-identical", int(not identical))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [(e["step"], e["loss"]) for e in events(straight.run_dir) if e["type"] == "log"]
    resumed_losses = {(e["step"], e["loss"]) for e in events(run_dir) if e["type"] == "log"}
    assert set(losses) == resumed_losses  # the same loss curve
