"""Model variants the GPU benchmarks compare against the trainer's model, to measure one change at
a time (`VARIANTS`: `training_step.py`'s options and the grid's cell flags; `op_count.py
--diffusers-layout`):

- `use_diffusers_layout` (`--diffusers-layout`, `:difflayout`): undo
  `acestep.models.layout.keep_sequence_major`, the residual stream transposed in memory as
  diffusers leaves it (the state before that change);
- `use_fused_rms_norm` (`--fused-rmsnorm`, `:fusednorm`): every diffusers `RMSNorm` of the model
  computed by `F.rms_norm`, one fused kernel on recent CUDA builds instead of eight (an
  experiment, not in the trainer: the result differs from diffusers' at bf16 rounding, so the GPU
  figure decides whether it goes in);
- `use_peft_input_casts` (`--peft-casts`, `:peftcast`): PEFT's cast of each adapted layer's input
  to fp32 turned back on (the state before `Adapter.skip_input_casts`);
- `use_diffusers_checkpointing` (`--diffusers-checkpointing`, `:diffckpt`, with checkpointing on):
  diffusers' hook-based gradient checkpointing instead of `acestep.training.recompute`'s
  re-entrant one (the state before that change).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

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


def use_peft_input_casts(model: torch.nn.Module) -> int:
    """Let every PEFT layer of `model` cast its input to the adapter's dtype again; returns how many."""
    from acestep.inference.strength import peft_layers

    layers = peft_layers(model)
    for layer in layers:
        layer.cast_input_dtype_enabled = True
    return len(layers)


def use_diffusers_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint the blocks of every checkpointed diffusers model in `model` the way diffusers does
    by default (`use_reentrant=False`); returns how many models. Raises ValueError when none has
    gradient checkpointing on (the variant needs it)."""
    from diffusers.models.modeling_utils import ModelMixin

    models = [m for m in model.modules() if isinstance(m, ModelMixin) and m.is_gradient_checkpointing]
    if not models:
        raise ValueError("the diffusers-checkpointing variant needs gradient checkpointing on (:ckpt)")
    for checkpointed in models:
        checkpointed.enable_gradient_checkpointing()
    return len(models)


@dataclass(frozen=True)
class Variant:
    """One change to measure: its grid cell flag, `training_step.py` option, table note and help."""

    flag: str
    option: str
    note: str
    help: str
    apply: Callable[[torch.nn.Module], object]


VARIANTS = (
    Variant("difflayout", "--diffusers-layout", "diffusers layout",
            "run the model with diffusers' transposed residual stream (without acestep.models.layout), to "
            "measure what that change gains", use_diffusers_layout),
    Variant("fusednorm", "--fused-rmsnorm", "fused RMSNorm",
            "compute the model's RMSNorms with F.rms_norm, an experiment", use_fused_rms_norm),
    Variant("peftcast", "--peft-casts", "PEFT input casts",
            "let PEFT cast each adapted layer's input to fp32 again (without Adapter.skip_input_casts), to "
            "measure what skipping them gains", use_peft_input_casts),
    Variant("diffckpt", "--diffusers-checkpointing", "diffusers' checkpointing",
            "checkpoint the blocks with diffusers' hook-based default instead of the trainer's re-entrant "
            "form (needs --gradient-checkpointing), to measure what that change gains",
            use_diffusers_checkpointing),
)
