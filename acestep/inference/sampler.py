"""The flow-matching sampler of ACE-Step 1.5, as small functions: timestep schedules and the
Euler loop with optional classifier-free guidance.

Faithful to upstream `generate_audio` (ace-step/ACE-Step-1.5 `acestep/models/{turbo,base}/
modeling_acestep_v15_*.py`, see shared/reference/acestep-model.md section 3.5):
- x_t = t·noise + (1−t)·x0 and the model predicts v = noise − x0, so one Euler step from t to
  t' is x_{t'} = x_t − v·(t − t'); the last step goes to t' = 0, i.e. returns x_t − v·t;
- timestep_r = t at every step (`time_embed_r` sees 0);
- turbo: one of three fixed 8-step tables, no guidance (the model is guidance-distilled);
- base/sft: linspace(1, 0, N+1) warped by t' = s·t / (1 + (s−1)·t), guidance when scale > 1 with
  the batch [cond ; null_condition_emb broadcast] in one forward.

Upstream base/sft guide with APG by default (momentum −0.75, norm threshold 2.5, projection over
the time axis; ADG is an option). `guidance="apg"` reproduces that through diffusers' own
`normalized_guidance` (the same function diffusers' AceStepPipeline calls); `guidance="cfg"` is
plain CFG, v = v_null + scale·(v_cond − v_null).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from acestep.errors import PreviewError
from acestep.inference import GUIDANCE_METHODS

# Upstream's SHIFT_TIMESTEPS (turbo generate_audio, fix_nfe = 8): the schedule formula below with
# N = 8, written out as upstream does so that no rounding can creep in.
TURBO_TIMESTEPS: dict[float, tuple[float, ...]] = {
    1.0: (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125),
    2.0: (1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693, 0.6666666666666666,
          0.5454545454545454, 0.4, 0.2222222222222222),
    3.0: (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3),
}
TURBO_STEPS = 8
# APG settings of upstream `apg_forward` / `MomentumBuffer` as `generate_audio` calls them.
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5


def timestep_schedule(variant_is_turbo: bool, steps: int, shift: float) -> list[float]:
    """The N timesteps the sampler visits, from 1.0 down (the final 0 is not included).

    Turbo: upstream's fixed table for `shift` 1, 2 or 3 with exactly 8 steps (the distilled model
    knows no others; upstream snaps other requests with a warning, we refuse them). Base/sft:
    linspace(1, 0, steps + 1)[:-1] warped by t' = s·t / (1 + (s−1)·t). Raises PreviewError on a
    bad request.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise PreviewError(f"steps must be a positive whole number, got {steps!r}")
    if not shift > 0:
        raise PreviewError(f"shift must be more than 0, got {shift!r}")
    if variant_is_turbo:
        if steps != TURBO_STEPS or float(shift) not in TURBO_TIMESTEPS:
            raise PreviewError(
                f"turbo checkpoints sample with exactly {TURBO_STEPS} steps and shift 1, 2 or 3 (their fixed "
                f"tables); got steps {steps!r}, shift {shift!r}. Leave steps and shift unset for the default "
                "(8 steps, shift 3), or use a base/sft checkpoint for other schedules.")
        return list(TURBO_TIMESTEPS[float(shift)])
    grid = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)[:-1].tolist()
    if shift == 1.0:
        return grid
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in grid]


def _model_place(transformer: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the frozen base weights (the condition embedder is never adapted; adapter
    weights may be fp32 over a bf16 base)."""
    weight = transformer.condition_embedder.weight
    return weight.device, weight.dtype


def _velocity(transformer, x: torch.Tensor, t: float, condition: torch.Tensor, context: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor:
    timestep = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
    out = transformer(hidden_states=x.to(dtype), timestep=timestep, timestep_r=timestep,
                      encoder_hidden_states=condition, context_latents=context, return_dict=False)
    return out[0].float()


@torch.no_grad()
def sample_latents(transformer, condition: torch.Tensor, null_condition: torch.Tensor | None,
                   context: torch.Tensor, frames: int, schedule: list[float], guidance_scale: float,
                   generator: torch.Generator, strength: float | None = None,
                   guidance: str = "apg") -> torch.Tensor:
    """Generate latents by Euler integration of the flow from noise (t = 1) to data (t = 0).

    In: the transformer (in eval mode; run without autocast), `condition` `[B, L, H]` (the packed
    condition-encoder output), `null_condition` `[1, 1, H]` (needed when guidance_scale > 1),
    `context` `[B, frames, 128]` (silence latent ‖ chunk mask), the schedule from
    `timestep_schedule`, a guidance scale (<= 1: no guidance, as upstream), a generator (the noise
    `[B, frames, 64]` is drawn from it in fp32, then moved to the model's device, so a seed gives
    the same noise on every device), the adapter `strength` (None: as it is; see
    `acestep.inference.strength`) and the guidance method (`apg` or `cfg`).
    Out: fp32 latents `[B, frames, 64]` on the model's device. The ODE state stays fp32 between
    steps; each forward sees it in the model's dtype. Raises PreviewError on bad arguments.
    """
    from acestep.inference.strength import adapter_strength

    device, dtype = _model_place(transformer)
    batch = condition.shape[0]
    if context.shape[:2] != (batch, frames):
        raise PreviewError(f"context is {tuple(context.shape)}, expected [{batch}, {frames}, channels]")
    if not schedule or any(not 0 < t <= 1 for t in schedule) or list(schedule) != sorted(schedule, reverse=True):
        raise PreviewError(f"the schedule must be decreasing values in (0, 1], got {schedule!r}")
    if guidance not in GUIDANCE_METHODS:
        raise PreviewError(f"guidance must be one of {', '.join(GUIDANCE_METHODS)}, got {guidance!r}")
    guided = guidance_scale > 1.0
    if guided and null_condition is None:
        raise PreviewError("guidance needs the checkpoint's null_condition_emb, which was not given")
    channels = int(transformer.config.audio_acoustic_hidden_dim)
    noise = torch.randn((batch, frames, channels), generator=generator, dtype=torch.float32)
    x = noise.to(device)
    condition = condition.to(device=device, dtype=dtype)
    context = context.to(device=device, dtype=dtype)
    if guided:
        null = null_condition.to(device=device, dtype=dtype).reshape(1, 1, -1).expand_as(condition)
        condition = torch.cat([condition, null], dim=0)
        context = torch.cat([context, context], dim=0)
        momentum = _momentum_buffer() if guidance == "apg" else None
    scope = adapter_strength(transformer, strength) if strength is not None else nullcontext()
    with scope, torch.autocast(device_type=device.type, enabled=False):
        for index, t in enumerate(schedule):
            if guided:
                v_cond, v_null = _velocity(transformer, torch.cat([x, x]), t, condition, context, dtype).chunk(2)
                v = _guide(v_cond, v_null, guidance_scale, guidance, momentum)
            else:
                v = _velocity(transformer, x, t, condition, context, dtype)
            t_next = schedule[index + 1] if index + 1 < len(schedule) else 0.0
            x = x - v * (t - t_next)
    return x


def _momentum_buffer():
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    return MomentumBuffer(momentum=APG_MOMENTUM)


def _guide(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float, method: str, momentum) -> torch.Tensor:
    if method == "cfg":
        return v_null + scale * (v_cond - v_null)
    from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

    # Upstream apg_forward(pred_cond, pred_uncond, scale, momentum, eta=0, norm_threshold=2.5,
    # dims=[1]) = pred_cond + (scale − 1)·update, which is diffusers' original formulation.
    return normalized_guidance(v_cond, v_null, scale - 1.0, momentum_buffer=momentum, eta=0.0,
                               norm_threshold=APG_NORM_THRESHOLD, use_original_formulation=True, norm_dim=(1,))
