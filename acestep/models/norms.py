"""The RMSNorms of the ACE-Step modules on PyTorch's fused kernel.

diffusers' `RMSNorm` normalises in eight operators (upcast, square, mean, add, rsqrt, multiply,
cast back, multiply by the weight), and autograd keeps the fp32 upcast besides the input. The 2B
DiT runs 169 of them per forward pass (three per block on the stream, q_norm and k_norm in each of
its 48 attention layers, the output norm): over a third of the forward pass's kernels, and more of
the backward pass's. `F.rms_norm` computes the same normalisation; where input and weight share a
dtype, PyTorch runs it on CUDA as one fused kernel forward and one backward (`_fused_rms_norm`),
and elsewhere (CPU) as the composite arithmetic above.

`FusedRMSNorm` is diffusers' RMSNorm with its forward on `F.rms_norm`: the same parameters, state
dict and output dtype. Where diffusers rounds twice in half precision (the normalised input, then
its product with the weight) the fused kernel rounds once, so a bf16 output differs from diffusers'
by at most one unit in the last place and is the nearer to the exact value; in fp32 they agree
to fp32 rounding (bit for bit on a CPU, where both run the same arithmetic).
Autocast is kept out of the call: CUDA's autocast runs `rms_norm` in fp32, which would hand an fp32
output on. A call whose input dtype is not the weight's (diffusers normalises in the input's dtype
and casts after), and a norm with a bias, compute as diffusers does.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers.models.normalization import RMSNorm
from torch import nn

from acestep.gpu.precision import autocast_enabled


class FusedRMSNorm(RMSNorm):
    """diffusers' `RMSNorm` computed by `F.rms_norm` (module docstring)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.bias is not None or (weight is not None and weight.dtype != hidden_states.dtype):
            return super().forward(hidden_states)
        device = hidden_states.device.type
        with torch.autocast(device, enabled=False) if autocast_enabled(device) else nullcontext():
            return F.rms_norm(hidden_states, hidden_states.shape[-1:], weight, self.eps)


def use_fused_rms_norm(module: nn.Module) -> nn.Module:
    """Compute every diffusers `RMSNorm` of `module` as `FusedRMSNorm` (the loader does this when
    it builds a module; parameters and state dict untouched); idempotent. Returns `module`."""
    for norm in module.modules():
        if type(norm) is RMSNorm:
            norm.__class__ = FusedRMSNorm
    return module
