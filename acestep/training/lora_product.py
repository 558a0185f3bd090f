"""LoRA's product added to the frozen layer's output in one GEMM (`torch.addmm`).

PEFT's LoRA `Linear.forward` computes `result + lora_B(lora_A(dropout(x))) * scaling`: after the
product come a multiplication by `scaling` and an addition, two more kernels that each read and
write a tensor as large as the layer's output, in the forward pass, again when a checkpointed block
is recomputed, and (the multiplication) in the backward pass, in every adapted layer (192 in a 2B
step with LoRA on attention). `torch.addmm(result, h, B.T, alpha=scaling)` does all three in one
GEMM. Under autocast it rounds once where PEFT's three kernels round three times (the same values
to bf16 rounding); autograd keeps the same tensors (the input of `lora_B` and its weight).

`FusedLoraLinear` is PEFT's LoRA `Linear` with that forward for the calls training makes:
adapters on and unmerged, one active adapter, plain LoRA (not DoRA), no bias on `lora_B`, PEFT's
input cast off (`Adapter.skip_input_casts`), no extra arguments, under autocast or with the
layer's output, `lora_A`'s output and `lora_B`'s weight in one dtype. Every other call runs
PEFT's own forward.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from acestep.gpu.precision import autocast_enabled


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear` with the product, scaling and sum in one `addmm` (module docstring)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts = None if args or kwargs else self._fusable(x)
        if parts is None:
            return super().forward(x, *args, **kwargs)
        lora_a, dropout, lora_b, scaling = parts
        result = self.base_layer(x)
        h = lora_a(dropout(x))
        fused = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_b.weight.t(),
                            alpha=scaling)
        return fused.view(result.shape)

    def _fusable(self, x: torch.Tensor) -> tuple | None:
        """(lora_A, dropout, lora_B, scaling) of the one active adapter when this call can take the
        fused product, else None. Read from the module dicts directly: it runs on every call."""
        if self.cast_input_dtype_enabled or self._disable_adapters or self.merged_adapters:
            return None
        active = self.active_adapters
        if len(active) != 1:
            return None
        name = active[0]
        lora_a, lora_b = self.lora_A._modules.get(name), self.lora_B._modules.get(name)
        if lora_a is None or lora_b is None or lora_b.bias is not None or name in self.lora_variant:
            return None
        same_dtype = x.dtype == self.base_layer.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype
        if not (same_dtype or autocast_enabled(x.device.type)):  # PEFT casts between them; addmm would refuse
            return None
        return lora_a, self.lora_dropout._modules[name], lora_b, self.scaling[name]


def fuse_lora_products(module: nn.Module) -> int:
    """Give every PEFT LoRA `Linear` of `module` the fused forward (parameters, state dict and
    PEFT's behaviour elsewhere untouched); idempotent. Returns how many layers have it."""
    count = 0
    for layer in module.modules():
        if type(layer) is LoraLinear:
            layer.__class__ = FusedLoraLinear
        count += isinstance(layer, FusedLoraLinear)
    return count
