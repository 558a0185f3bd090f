"""acestep.training.optim: every optimizer trains, no silent fallback, schedule curves."""

import io
import math
import sys

import pytest
import torch

from acestep.errors import TrainingError
from acestep.training.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    lr_lambda,
)

LEARNING_RATES = {"adamw": 1e-2, "adamw8bit": 1e-2, "adafactor": 1e-2, "prodigy": 1.0}


def _regression():
    """A 128 -> 64 linear layer (8192 weights: above bitsandbytes' 4096 threshold for 8-bit state)."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(128, 64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(64, 128, generator=g) * 0.05)
        model.bias.zero_()
    x = torch.randn(256, 128, generator=g)
    y = x @ (torch.randn(128, 64, generator=g) * 0.1)
    return model, x, y


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_reduces_a_simple_loss(name):
    model, x, y = _regression()
    optimizer = build_optimizer(model.parameters(), name, lr=LEARNING_RATES[name], weight_decay=0.0)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_optimizer_classes_and_settings():
    model, _, _ = _regression()
    adamw = build_optimizer(model.parameters(), "adamw", lr=1e-4, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6)
    assert type(adamw) is torch.optim.AdamW
    group = adamw.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-4, 0.05, (0.8, 0.99), 1e-6)
    assert not group["fused"]  # CPU parameters: fused only on CUDA
    adafactor = build_optimizer(model.parameters(), "adafactor", lr=1e-3, weight_decay=0.02)
    group = adafactor.param_groups[0]
    assert type(adafactor).__name__ == "Adafactor"
    assert (group["lr"], group["weight_decay"]) == (1e-3, 0.02)
    assert not (group["relative_step"] or group["scale_parameter"] or group["warmup_init"])
    prodigy = build_optimizer(model.parameters(), "prodigy", lr=1.0, betas=(0.9, 0.99), weight_decay=0.01)
    assert type(prodigy).__name__ == "Prodigy"
    assert (prodigy.param_groups[0]["betas"], prodigy.param_groups[0]["weight_decay"]) == ((0.9, 0.99), 0.01)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]
    assert build_optimizer(groups, "adamw", lr=1e-4).param_groups[1]["weight_decay"] == 0.0


def test_adamw8bit_keeps_real_8bit_state():
    import bitsandbytes

    model, x, y = _regression()
    optimizer = build_optimizer(model.parameters(), "adamw8bit", lr=1e-3)
    assert isinstance(optimizer, bitsandbytes.optim.AdamW8bit)
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    state = optimizer.state[model.weight]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8


def test_missing_bitsandbytes_is_an_error_not_adamw(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    model, _, _ = _regression()
    with pytest.raises(TrainingError, match="bitsandbytes") as caught:
        build_optimizer(model.parameters(), "adamw8bit", lr=1e-4)
    assert "pip install bitsandbytes" in str(caught.value)


def test_bitsandbytes_failing_to_import_is_an_error(monkeypatch):
    class BrokenLibrary:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] == "bitsandbytes":
                raise RuntimeError("CUDA Setup failed")
            return None

    for module in [name for name in sys.modules if name.split(".")[0] == "bitsandbytes"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [BrokenLibrary(), *sys.meta_path])
    model, _, _ = _regression()
    with pytest.raises(TrainingError, match="CUDA Setup failed"):
        build_optimizer(model.parameters(), "adamw8bit", lr=1e-4)


def test_missing_prodigyopt_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    model, _, _ = _regression()
    with pytest.raises(TrainingError, match="pip install prodigyopt"):
        build_optimizer(model.parameters(), "prodigy", lr=1.0)


def test_bad_optimizer_arguments():
    model, _, _ = _regression()
    with pytest.raises(TrainingError, match="adamw, adamw8bit, adafactor, prodigy"):
        build_optimizer(model.parameters(), "sgd", lr=1e-4)
    with pytest.raises(TrainingError, match="learning rate"):
        build_optimizer(model.parameters(), "adamw", lr=0.0)
    with pytest.raises(TrainingError, match="no parameters"):
        build_optimizer([], "adamw", lr=1e-4)


# --- schedules: warmup 4, total 14, so progress = (s - 4) / 10 after warmup ---

def _cos(progress):
    return 0.5 * (1 + math.cos(math.pi * progress))


EXPECTED_CURVES = {
    "cosine": {0: 0.2, 3: 0.8, 4: 1.0, 6: _cos(0.2), 9: 0.5, 13: _cos(0.9), 14: 0.0, 50: 0.0},
    # restarts=2: two cycles of 5 steps, back to 1 at step 9
    "cosine_with_restarts": {0: 0.2, 4: 1.0, 6: _cos(0.4), 8: _cos(0.8), 9: 1.0, 11: _cos(0.4), 14: 0.0, 50: 0.0},
    "linear": {0: 0.2, 3: 0.8, 4: 1.0, 9: 0.5, 11: 0.3, 13: 0.1, 14: 0.0, 50: 0.0},
    "constant": {0: 1.0, 3: 1.0, 13: 1.0, 14: 1.0, 50: 1.0},
    "constant_with_warmup": {0: 0.2, 1: 0.4, 3: 0.8, 4: 1.0, 14: 1.0, 50: 1.0},
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedule_curve_at_chosen_steps(name):
    multiplier = lr_lambda(name, warmup_steps=4, total_steps=14, restarts=2)
    for step, expected in EXPECTED_CURVES[name].items():
        assert multiplier(step) == pytest.approx(expected, abs=1e-12), (name, step)
    assert all(0.0 <= multiplier(step) <= 1.0 for step in range(60))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedule_edge_cases(name):
    # No warmup: full lr at step 0 (decaying ones start at the top of the curve).
    assert lr_lambda(name, 0, 10)(0) == 1.0
    # Warmup longer than the run: the ramp over the warmup steps; decaying ones give 0 from total on,
    # constant_with_warmup does not depend on total.
    long_warmup = lr_lambda(name, 10, 5)
    if name == "constant":
        assert [long_warmup(s) for s in (0, 4, 5, 12)] == [1.0] * 4
    else:
        assert long_warmup(0) == pytest.approx(1 / 11) and long_warmup(4) == pytest.approx(5 / 11)
        if name == "constant_with_warmup":
            assert long_warmup(5) == pytest.approx(6 / 11) and long_warmup(10) == long_warmup(12) == 1.0
        else:
            assert long_warmup(5) == long_warmup(12) == 0.0
    # Warmup equal to the run and a one-step run: no division by zero.
    assert 0.0 <= lr_lambda(name, 5, 5)(5) <= 1.0
    assert lr_lambda(name, 0, 1)(0) == 1.0


def test_bad_scheduler_arguments():
    with pytest.raises(TrainingError, match="cosine, cosine_with_restarts, linear, constant, constant_with_warmup"):
        lr_lambda("exponential", 0, 10)
    with pytest.raises(TrainingError):
        lr_lambda("cosine", -1, 10)
    with pytest.raises(TrainingError):
        lr_lambda("cosine", 0, 0)
    with pytest.raises(TrainingError):
        lr_lambda("cosine_with_restarts", 0, 10, restarts=0)


def _lrs(optimizer, scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_scheduler_drives_the_optimizer_lr():
    model, _, _ = _regression()
    optimizer = build_optimizer(model.parameters(), "adamw", lr=1e-3)
    scheduler = build_scheduler(optimizer, "cosine", warmup_steps=4, total_steps=14)
    lrs = _lrs(optimizer, scheduler, 16)
    expected = [1e-3 * lr_lambda("cosine", 4, 14)(s) for s in range(16)]
    assert lrs == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("name", ["cosine_with_restarts", "linear"])
def test_scheduler_state_dict_round_trip_resumes_the_lr_sequence(name):
    def build():
        model, _, _ = _regression()
        optimizer = build_optimizer(model.parameters(), "adamw", lr=2e-4)
        return optimizer, build_scheduler(optimizer, name, warmup_steps=3, total_steps=20, restarts=3)

    optimizer, scheduler = build()
    uninterrupted = _lrs(optimizer, scheduler, 20)
    optimizer, scheduler = build()
    first_half = _lrs(optimizer, scheduler, 9)
    saved = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    optimizer, scheduler = build()
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert first_half + _lrs(optimizer, scheduler, 11) == uninterrupted
