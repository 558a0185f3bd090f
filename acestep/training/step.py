"""The flow-matching loss of one batch, as the model was pre-trained (see
`shared/reference/acestep-model.md` section 3), and the validation loss at fixed noise and
fixed timestep quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from acestep.training.data import TrainingBatch, derived_seed
from acestep.training.objective import (
    apply_cfg_dropout,
    context_latents,
    flow_target,
    masked_flow_loss,
    min_snr_weights,
    noisy_latents,
    sample_timesteps,
    sample_turbo_timesteps,
)

VALIDATION_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Objective:
    """The resolved objective settings of a run (μ and σ already taken from the checkpoint)."""

    sampling: str  # logit_normal | turbo_discrete
    mu: float
    sigma: float
    cfg_dropout: float
    min_snr_gamma: float | None

    def describe(self) -> str:
        if self.sampling == "turbo_discrete":
            return "discrete turbo shift-3 table (8 values)"
        return f"logit-normal(μ={self.mu:g}, σ={self.sigma:g}), the larger of two draws (the model's sample_t_r)"


def batch_loss(model, batch: TrainingBatch, objective: Objective, silence_latent: torch.Tensor,
               null_condition_emb: torch.Tensor, generator: torch.Generator, model_dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-sample masked flow-matching loss (fp32) of one batch.

    Draw order from `generator`: CFG dropout, timesteps, noise. x_t = t·noise + (1−t)·x0, the
    target is noise − x0, the condition of dropped samples is the learned null embedding.
    """
    x0 = batch.target_latents
    size, frames = x0.shape[0], x0.shape[1]
    condition, _ = apply_cfg_dropout(batch.encoder_hidden_states, null_condition_emb, objective.cfg_dropout, generator)
    if objective.sampling == "turbo_discrete":
        t, r = sample_turbo_timesteps(size, generator=generator, device=x0.device)
    else:
        t, r = sample_timesteps(size, objective.mu, objective.sigma, generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
    context = context_latents(silence_latent, frames, size).to(model_dtype)
    prediction = model(hidden_states=noisy_latents(x0, noise, t).to(model_dtype), timestep=t.to(model_dtype),
                       timestep_r=r.to(model_dtype), encoder_hidden_states=condition.to(model_dtype),
                       context_latents=context).sample
    weights = min_snr_weights(t, objective.min_snr_gamma) if objective.min_snr_gamma else None
    # Every sample holds at least one frame (preprocessing refuses shorter audio), so the
    # emptiness check, a host sync, is skipped on the training path.
    return masked_flow_loss(prediction, flow_target(x0, noise), batch.frame_mask, weights, check_empty_samples=False)


def validation_timesteps(objective: Objective) -> list[float]:
    """Fixed timesteps at quantiles of the training distribution: for the max of two
    logit-normals the CDF is F(t)², so the q-quantile is sigmoid(μ + σ·Φ⁻¹(√q))."""
    if objective.sampling == "turbo_discrete":
        from acestep.training.objective import TURBO_SHIFT3_TIMESTEPS

        return list(TURBO_SHIFT3_TIMESTEPS)
    normal = NormalDist()
    return [1 / (1 + math.exp(-(objective.mu + objective.sigma * normal.inv_cdf(math.sqrt(q)))))
            for q in VALIDATION_QUANTILES]


@torch.no_grad()
def validation_loss(model, batches, objective: Objective, silence_latent: torch.Tensor, model_dtype: torch.dtype,
                    seed: int, device: torch.device) -> float:
    """Mean per-sample loss over the validation batches at every fixed timestep, with noise
    drawn from generators seeded by (seed, sample id, timestep): independent of the training RNG,
    of batching and of the epoch, so two epochs' values are comparable. No CFG dropout."""
    timesteps = validation_timesteps(objective)
    total, count = torch.zeros((), device=device), 0
    for batch in batches:
        batch = batch.to(device)
        x0 = batch.target_latents
        size, frames = x0.shape[0], x0.shape[1]
        context = context_latents(silence_latent, frames, size).to(model_dtype)
        for k, value in enumerate(timesteps):
            noise = torch.stack([
                torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(derived_seed(seed, sample_id, k)))
                for sample_id in batch.ids]).to(device)
            t = torch.full((size,), value, device=device)
            prediction = model(hidden_states=noisy_latents(x0, noise, t).to(model_dtype), timestep=t.to(model_dtype),
                               timestep_r=t.to(model_dtype), encoder_hidden_states=batch.encoder_hidden_states.to(
                                   model_dtype), context_latents=context).sample
            _, per_sample = masked_flow_loss(prediction, flow_target(x0, noise), batch.frame_mask)
            total += per_sample.sum()
            count += size
    return (total / max(count, 1)).item()
