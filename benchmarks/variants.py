"""Model variants the GPU benchmarks compare against the trainer's model, to measure one change at
a time (`training_step.py --diffusers-layout / --fused-rmsnorm`, the grid's `:difflayout` and
`:fusednorm` cells, `op_count.py --diffusers-layout`):

- `use_diffusers_layout`: undo `acestep.models.layout.keep_sequence_major`, the residual stream
  transposed in memory as diffusers leaves it (the state before that change);
- `use_fused_rms_norm`: every diffusers `RMSNorm` of the model computed by `F.rms_norm`, one fused
  kernel on recent CUDA builds instead of eight (an experiment, not in the trainer: the result
  differs from diffusers' at bf16 rounding, so the GPU figure decides whether it goes in).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def use_diffusers_layout(model: torch.nn.Module) -> None:
    """Remove the sequence-major hook from every patchify convolution in `model`."""
    from acestep.models.layout import _sequence_major

    convs = [m.proj_in_conv for m in model.modules() if hasattr(m, "proj_in_conv")]
    if not convs:
        raise ValueError("no transformer with proj_in_conv in the model")
    for conv in convs:
        for key in [k for k, hook in conv._forward_hooks.items() if hook is _sequence_major]:
            del conv._forward_hooks[key]


def _fused_rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # diffusers casts to a half-precision weight's dtype before the weight; F.rms_norm takes the
    # input in that dtype and normalises in fp32 inside; autocast must not upcast the call
    dtype = self.weight.dtype if self.weight.dtype in (torch.float16, torch.bfloat16) else hidden_states.dtype
    with torch.autocast(hidden_states.device.type, enabled=False):
        return F.rms_norm(hidden_states.to(dtype), (hidden_states.shape[-1],), self.weight.to(dtype), self.eps)


def use_fused_rms_norm(model: torch.nn.Module) -> int:
    """Compute every affine, bias-free diffusers `RMSNorm` of `model` with `F.rms_norm`; returns how many."""
    from diffusers.models.normalization import RMSNorm

    swapped = 0
    for module in model.modules():
        if isinstance(module, RMSNorm) and module.weight is not None and getattr(module, "bias", None) is None:
            module.forward = types.MethodType(_fused_rms_norm_forward, module)
            swapped += 1
    return swapped
