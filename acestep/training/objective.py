"""The training objective of ACE-Step 1.5, as small pure functions.

Faithful to the model's own training `forward` (see shared/reference/acestep-model.md section 3):
x_t = t·noise + (1−t)·x0, target noise − x0, t the max of two logit-normal draws with r = t, CFG
dropout to the checkpoint's learned `null_condition_emb`. Two deliberate differences: the loss is
masked to valid frames (the official trainers count padding) and Min-SNR-γ weighting is optional.

Every random draw comes from the `generator` passed in (the global RNG when None); no function
keeps state. Timesteps are always fp32, whatever autocast or the default dtype says.
"""

from __future__ import annotations

import math

import torch

from acestep.errors import TrainingError

# The turbo model's 8-step shift-3 schedule: `shifted_schedule(8, 3.0)`.
TURBO_SHIFT3_TIMESTEPS: tuple[float, ...] = (
    1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3,
)
# Min-SNR clamps t into [T_EPS, 1 - T_EPS]: SNR is infinite at t = 0 and zero at t = 1.
T_EPS = 1e-6


def shifted_schedule(num_steps: int, shift: float) -> list[float]:
    """The inference timesteps t_i = linspace(1, 0, N+1)[:-1], warped by t' = s·t / (1 + (s−1)·t).

    `num_steps` N >= 1 and `shift` s > 0 in; N floats out, from 1.0 down (0 is not included).
    Shift 3 with N = 8 gives `TURBO_SHIFT3_TIMESTEPS`. Raises TrainingError on bad arguments.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise TrainingError(f"shifted_schedule: num_steps must be a positive integer, got {num_steps!r}")
    if not shift > 0:
        raise TrainingError(f"shifted_schedule: shift must be > 0, got {shift!r}")
    steps = [1.0 - i / num_steps for i in range(int(num_steps))]
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in steps]


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    """Draws happen where the generator lives, so one seed gives the same numbers on every device."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def sample_timesteps(batch_size: int, mu: float = -0.4, sigma: float = 1.0,
                     generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's `sample_t_r` with `use_meanflow=False`: t = max of two sigmoid(N(mu, sigma)) draws, r = t.

    In: batch size, the checkpoint's `timestep_mu` / `timestep_sigma`, an optional generator and the
    target device. Out: `(t, r)`, each fp32 `[batch_size]` on `device`; r holds the same values as t
    in a separate tensor. Draw order: randn(B) for the first draw, then randn(B) for the second,
    drawn on the generator's device (CPU when no generator and no device) and moved to `device`.
    Mean 0.535, median 0.536 at the defaults (a single logit-normal would give 0.418 / 0.401).
    """
    _check_batch(batch_size)
    where = _draw_device(generator, device)
    with torch.autocast(device_type=where.type, enabled=False):
        first = torch.randn(batch_size, generator=generator, device=where, dtype=torch.float32)
        second = torch.randn(batch_size, generator=generator, device=where, dtype=torch.float32)
        t = torch.maximum(torch.sigmoid(first * sigma + mu), torch.sigmoid(second * sigma + mu))
    t = t.to(device) if device is not None else t
    return t, t.clone()


def sample_turbo_timesteps(batch_size: int, generator: torch.Generator | None = None, device=None,
                           table: tuple[float, ...] = TURBO_SHIFT3_TIMESTEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The upstream Feb trainer's turbo option: t uniform over the discrete `table`, r = t.

    Out: `(t, r)`, fp32 `[batch_size]` on `device`, r a separate tensor with t's values. One
    randint(len(table), (B,)) draw from `generator`. Raises TrainingError on an empty table.
    """
    _check_batch(batch_size)
    if len(table) == 0:
        raise TrainingError("sample_turbo_timesteps: the timestep table is empty")
    where = _draw_device(generator, device)
    index = torch.randint(len(table), (batch_size,), generator=generator, device=where)
    t = torch.tensor(table, dtype=torch.float32, device=where)[index]
    t = t.to(device) if device is not None else t
    return t, t.clone()


def _check_batch(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise TrainingError(f"batch_size must be a positive integer, got {batch_size!r}")


def replace_with_null(encoder_hidden_states: torch.Tensor, null_condition_emb: torch.Tensor | None,
                      dropped: torch.Tensor) -> torch.Tensor:
    """Replace the whole condition of each `dropped` sample by the null embedding at every position.

    In: states `[B, L, H]`, `null_condition_emb` `[1, 1, H]` (any shape of H elements), `dropped`
    `[B]` (bool, or numbers where nonzero means dropped). Out: a new `[B, L, H]` tensor in the
    states' dtype and device; kept samples are bit-identical, the input is not modified.
    Raises TrainingError when the null embedding is missing or its width is not H.
    """
    _check_null(encoder_hidden_states, null_condition_emb)
    batch, _, width = encoder_hidden_states.shape
    if dropped.shape != (batch,):
        raise TrainingError(f"dropped must be [{batch}], got {tuple(dropped.shape)}")
    null = null_condition_emb.reshape(1, 1, width).to(device=encoder_hidden_states.device,
                                                      dtype=encoder_hidden_states.dtype)
    mask = (dropped if dropped.dtype == torch.bool else dropped != 0).to(encoder_hidden_states.device)
    return torch.where(mask.view(batch, 1, 1), null.expand_as(encoder_hidden_states), encoder_hidden_states)


def _check_null(encoder_hidden_states: torch.Tensor, null_condition_emb: torch.Tensor | None) -> None:
    if null_condition_emb is None:
        raise TrainingError(
            "CFG dropout needs the checkpoint's learned null_condition_emb, and this checkpoint lacks it; "
            "use an official ACE-Step 1.5 checkpoint or set the CFG dropout probability to 0.")
    if encoder_hidden_states.dim() != 3:
        raise TrainingError(f"encoder_hidden_states must be [batch, length, width], got "
                            f"{tuple(encoder_hidden_states.shape)}")
    width = encoder_hidden_states.shape[2]
    if null_condition_emb.numel() != width:
        raise TrainingError(
            f"null_condition_emb has shape {tuple(null_condition_emb.shape)} but the condition is {width} wide; "
            "the checkpoint and the preprocessed tensors come from different models.")


def apply_cfg_dropout(encoder_hidden_states: torch.Tensor, null_condition_emb: torch.Tensor | None, prob: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG dropout as in the model's training `forward`, before the condition embedder.

    In: states `[B, L, H]`, the checkpoint's `null_condition_emb` `[1, 1, H]`, `prob` in [0, 1].
    One draw u = rand(B) from `generator` (on the generator's device, else the states' device),
    always made, also at prob 0 and 1, so the RNG stream does not depend on `prob`; a sample is
    dropped when u < prob (prob 0: none, prob 1: all). Out: `(new_states, dropped)`, new states in
    the input dtype (see `replace_with_null`) and `dropped` bool `[B]` on the states' device.
    Raises TrainingError for a prob outside [0, 1], a mismatched null embedding, or a missing one
    when prob > 0 (never a zero fallback); at prob 0 a missing one is fine, as nothing is replaced.
    """
    if not 0.0 <= prob <= 1.0:
        raise TrainingError(f"CFG dropout probability must be in [0, 1], got {prob!r}")
    if prob > 0 or null_condition_emb is not None:
        _check_null(encoder_hidden_states, null_condition_emb)  # fail before consuming a draw
    batch = encoder_hidden_states.shape[0]
    where = generator.device if generator is not None else encoder_hidden_states.device
    u = torch.rand(batch, generator=generator, device=where, dtype=torch.float32)
    dropped = (u < prob).to(encoder_hidden_states.device)
    if null_condition_emb is None:  # prob 0: nothing to replace, so no null embedding is needed
        return encoder_hidden_states.clone(), dropped
    return replace_with_null(encoder_hidden_states, null_condition_emb, dropped), dropped


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t `[B]` viewed as `[B, 1, ...]` to broadcast against `like`."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t·noise + (1−t)·x0 with t `[B]` broadcast over the other dims (t = 1 is pure noise).

    Computed in the promoted dtype of the inputs (fp32 with fp32 timesteps), in the upstream
    order of operations; returned in x0's dtype, the latent dtype the decoder is fed.
    """
    t_ = _per_sample(t, x0)
    return (t_ * noise + (1.0 - t_) * x0).to(x0.dtype)


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the decoder learns to predict: noise − x0 (same shape, promoted dtype)."""
    return noise - x0


def min_snr_weights(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for flow matching: snr = ((1−t)/t)², w = min(snr, γ)/snr.

    In: t `[B]` (any float dtype), γ > 0. Out: fp32 `[B]` in (0, 1]. t is clamped to
    [1e-6, 1 − 1e-6] first, so t = 0 gives a tiny finite weight and t = 1 gives 1, never NaN/Inf.
    Raises TrainingError for γ <= 0.
    """
    if not gamma > 0:
        raise TrainingError(f"Min-SNR gamma must be > 0, got {gamma!r}")
    t = t.float().clamp(T_EPS, 1.0 - T_EPS)
    snr = ((1.0 - t) / t) ** 2
    return torch.clamp(snr, max=gamma) / snr


def masked_flow_loss(prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor,
                     weights: torch.Tensor | None = None,
                     check_empty_samples: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error over valid frames only, in fp32.

    In: prediction and target `[B, T, C]` (any dtype), `frame_mask` `[B, T]` (bool, or numbers where
    nonzero means valid), optional per-sample `weights` `[B]` (e.g. `min_snr_weights`).
    Out: `(loss, per_sample)`, fp32 scalar and fp32 `[B]`: per_sample[b] is the mean of
    (pred − target)² over sample b's valid frames and all channels (times weights[b]); loss is
    their batch mean. Padded frames are selected away with `torch.where` before any arithmetic,
    so whatever they hold (even NaN or Inf) changes neither the loss nor the gradients.
    Raises TrainingError for mismatched shapes, and for a sample with no valid frame — that check
    reads the mask on the host (one device sync); pass `check_empty_samples=False` when the batch is
    known to be non-empty, and an empty sample then gives NaN (caught by the loop's non-finite guard).
    """
    if prediction.shape != target.shape or prediction.dim() != 3:
        raise TrainingError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} "
                            "must have the same [batch, frames, channels] shape")
    if frame_mask.shape != prediction.shape[:2]:
        raise TrainingError(f"frame_mask {tuple(frame_mask.shape)} must be [batch, frames] = "
                            f"{tuple(prediction.shape[:2])}")
    valid = (frame_mask if frame_mask.dtype == torch.bool else frame_mask != 0).to(prediction.device)
    counts = valid.sum(dim=1)
    if check_empty_samples and bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise TrainingError(f"samples {empty} of the batch have no valid frame; the masked loss is undefined")
    diff = torch.where(valid.unsqueeze(-1), prediction.float() - target.float(), 0.0)
    per_sample = diff.square().sum(dim=(1, 2)) / (counts * prediction.shape[2]).float()
    if weights is not None:
        if weights.shape != per_sample.shape:
            raise TrainingError(f"weights must be [{per_sample.shape[0]}], got {tuple(weights.shape)}")
        per_sample = per_sample * weights.float().to(per_sample.device)
    return per_sample.mean(), per_sample


def context_latents(silence_latent: torch.Tensor, frames: int, batch_size: int) -> torch.Tensor:
    """The official text2music context: [silence latent frames ‖ chunk mask of ones], context first.

    In: `silence_latent` `[1, F, C]` time-major (as `AceStepBundle.silence_latent`), the number of
    frames T and the batch size B. Out: `[B, T, 2C]` in the silence latent's dtype and device, a
    fresh tensor; when T > F the silence latent is tiled from its start. Raises TrainingError on
    a wrongly shaped silence latent or non-positive sizes.
    """
    if silence_latent.dim() != 3 or silence_latent.shape[0] != 1 or silence_latent.shape[1] < 1:
        raise TrainingError(f"silence_latent must be [1, frames, channels] (time-major), got "
                            f"{tuple(silence_latent.shape)}")
    if int(frames) != frames or frames < 1:
        raise TrainingError(f"frames must be a positive integer, got {frames!r}")
    _check_batch(batch_size)
    available = silence_latent.shape[1]
    if frames > available:
        silence_latent = silence_latent.repeat(1, math.ceil(frames / available), 1)
    source = silence_latent[:, :frames]
    return torch.cat([source, torch.ones_like(source)], dim=-1).repeat(batch_size, 1, 1)
