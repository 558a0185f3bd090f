"""The schedules and the Euler/CFG/APG sampler of `acestep/inference/sampler.py`, checked against
upstream's tables and formulas with a stand-in transformer whose velocity is known."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from acestep.inference.sampler import (
    TURBO_TIMESTEPS,
    PreviewError,
    _guide,
    _momentum_buffer,
    sample_latents,
    timestep_schedule,
)

from .conftest import load_transformer

# acestep-model.md section 3.5, as printed there (4 decimals).
DOC_TABLES = {
    1.0: [1, .875, .75, .625, .5, .375, .25, .125],
    2.0: [1, .9333, .8571, .7692, .6667, .5455, .4, .2222],
    3.0: [1, .9545, .9, .8333, .75, .6429, .5, .3],
}


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_schedules_are_the_upstream_tables(shift):
    schedule = timestep_schedule(True, 8, shift)
    assert schedule == pytest.approx(DOC_TABLES[shift], abs=5e-5)
    assert schedule == list(TURBO_TIMESTEPS[shift])
    # The tables are the base formula at N = 8: one rule, two spellings.
    assert timestep_schedule(False, 8, shift) == pytest.approx(schedule, abs=1e-15)


def test_base_schedule_is_warped_linspace():
    assert timestep_schedule(False, 50, 1.0) == pytest.approx([1 - i / 50 for i in range(50)], abs=1e-15)
    warped = timestep_schedule(False, 4, 2.0)
    assert warped == pytest.approx([2 * t / (1 + t) for t in (1.0, 0.75, 0.5, 0.25)], abs=1e-15)


@pytest.mark.parametrize("turbo, steps, shift, fragment", [
    (True, 7, 3.0, "exactly 8 steps and shift 1, 2 or 3"),
    (True, 8, 2.5, "exactly 8 steps and shift 1, 2 or 3"),
    (False, 0, 1.0, "steps must be a positive whole number"),
    (False, 2.5, 1.0, "steps must be a positive whole number"),
    (False, 10, 0.0, "shift must be more than 0"),
])
def test_bad_schedules_are_refused(turbo, steps, shift, fragment):
    with pytest.raises(PreviewError, match=fragment):
        timestep_schedule(turbo, steps, shift)


class ConstantVelocity(nn.Module):
    """Stands in for the transformer: v = the condition's first value (per sample), and records calls."""

    def __init__(self):
        super().__init__()
        self.condition_embedder = nn.Linear(4, 4)
        self.config = SimpleNamespace(audio_acoustic_hidden_dim=64)
        self.calls = []

    def forward(self, hidden_states, timestep, timestep_r, encoder_hidden_states, context_latents, return_dict):
        self.calls.append((timestep.clone(), timestep_r.clone(), encoder_hidden_states.clone(), hidden_states.clone()))
        v = encoder_hidden_states[:, :1, :1].expand_as(hidden_states)
        return (v + 0 * hidden_states,)


def run_constant(condition_value, null_value, scale, schedule, method="cfg", seed=3):
    model = ConstantVelocity()
    condition = torch.full((1, 5, 4), condition_value)
    null = torch.full((1, 1, 4), null_value)
    context = torch.zeros(1, 6, 128)
    latents = sample_latents(model, condition, null, context, 6, schedule, scale, torch.Generator().manual_seed(seed),
                             guidance=method)
    noise = torch.randn((1, 6, 64), generator=torch.Generator().manual_seed(seed))
    return model, latents, noise


def test_euler_steps_integrate_from_one_to_zero_with_r_equal_t():
    schedule = timestep_schedule(True, 8, 3.0)
    model, latents, noise = run_constant(0.25, 0.0, 1.0, schedule)
    # x_{t'} = x_t − v·(t − t'), the last step to 0: a constant v moves the noise by exactly v·1.
    assert torch.allclose(latents, noise - 0.25, atol=1e-6)
    assert [call[0].item() for call in model.calls] == pytest.approx(schedule)
    assert all(torch.equal(t, r) for t, r, _, _ in model.calls)
    assert model.calls[0][3].equal(noise)  # the first step sees the generator's noise


def test_cfg_batches_condition_and_null_and_combines_them():
    schedule = timestep_schedule(False, 4, 1.0)
    model, latents, noise = run_constant(0.5, 0.1, 7.0, schedule)
    expected_v = 0.1 + 7.0 * (0.5 - 0.1)
    assert torch.allclose(latents, noise - expected_v, atol=1e-5)
    _, _, states, hidden = model.calls[0]
    assert states.shape == (2, 5, 4) and torch.all(states[0] == 0.5) and torch.all(states[1] == 0.1)
    assert torch.equal(hidden[0], hidden[1])
    # scale 1 means no guidance, as upstream (do_cfg = scale > 1): one forward of batch 1
    model, _, _ = run_constant(0.5, 0.1, 1.0, schedule)
    assert model.calls[0][2].shape[0] == 1


def upstream_apg(pred_cond, pred_uncond, guidance_scale, buffer, eta=0.0, norm_threshold=2.5, dims=(1,)):
    """ace-step/ACE-Step-1.5 apg_forward and its MomentumBuffer/project, written out."""
    diff = pred_cond - pred_uncond
    buffer["avg"] = diff + (-0.75) * buffer["avg"]
    diff = buffer["avg"]
    norm = diff.norm(p=2, dim=list(dims), keepdim=True)
    diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    v0, v1 = diff.double(), torch.nn.functional.normalize(pred_cond.double(), dim=list(dims))
    parallel = (v0 * v1).sum(dim=list(dims), keepdim=True) * v1
    orthogonal = (v0 - parallel).to(diff.dtype)
    return pred_cond + (guidance_scale - 1) * (orthogonal + eta * parallel.to(diff.dtype))


def test_apg_is_upstream_apg_forward_with_momentum():
    generator = torch.Generator().manual_seed(0)
    momentum, reference = _momentum_buffer(), {"avg": 0}
    for _ in range(3):  # the momentum carries over steps
        cond, uncond = (torch.randn(1, 30, 64, generator=generator) * 3 for _ in range(2))
        ours = _guide(cond, uncond, 7.0, "apg", momentum)
        assert torch.allclose(ours, upstream_apg(cond, uncond, 7.0, reference), atol=1e-6)
    assert not torch.allclose(ours, _guide(cond, uncond, 7.0, "cfg", None))


def test_sampler_is_deterministic_per_seed(turbo_dit):
    transformer = load_transformer(turbo_dit).eval()
    condition = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 20, 128, generator=torch.Generator().manual_seed(2))
    schedule = timestep_schedule(True, 8, 3.0)

    def sample(seed):
        return sample_latents(transformer, condition, None, context, 20, schedule, 1.0,
                              torch.Generator().manual_seed(seed))

    first = sample(4)
    assert first.shape == (1, 20, 64) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, sample(4))
    assert (first - sample(5)).abs().max() > 1e-2


def test_sampler_refuses_bad_arguments(turbo_dit):
    transformer = ConstantVelocity()
    condition, context, generator = torch.zeros(1, 3, 4), torch.zeros(1, 6, 128), torch.Generator()
    with pytest.raises(PreviewError, match="context is"):
        sample_latents(transformer, condition, None, context, 7, [1.0], 1.0, generator)
    with pytest.raises(PreviewError, match="decreasing values"):
        sample_latents(transformer, condition, None, context, 6, [0.5, 1.0], 1.0, generator)
    with pytest.raises(PreviewError, match="null_condition_emb"):
        sample_latents(transformer, condition, None, context, 6, [1.0], 7.0, generator)
    with pytest.raises(PreviewError, match="guidance must be one of apg, cfg"):
        sample_latents(transformer, condition, None, context, 6, [1.0], 1.0, generator, guidance="adg")
