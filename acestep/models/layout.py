"""Memory layout of the DiT's residual stream.

diffusers' `AceStepTransformer1DModel` patchifies with `proj_in_conv(hidden_states.transpose(1, 2))
.transpose(1, 2)`: the convolution writes `[B, D, T]`, and the transpose back gives a `[B, T, D]`
view whose D axis is outermost in memory. Every elementwise op keeps that layout, so the whole
residual stream of every block stays transposed, and each `nn.Linear` on it (projections, MLP,
LoRA) can no longer fold the batch into one matrix product: it runs as a batched matmul against
its weight expanded over the batch, forward and backward, and the attention reshapes copy.

`keep_sequence_major` hands the convolution's output over with T outermost instead (the same
values, laid out `[B, T, D]`-contiguous), so the stream is contiguous from the first block on and
every Linear is one GEMM. The outputs agree with the unchanged model to rounding (the products
sum in another order); the parameters and the state dict are untouched.
"""

from __future__ import annotations

import torch
from torch import nn


def _sequence_major(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of the patchify convolution: its `[B, D, T]` output stored T-major."""
    return output.transpose(1, 2).contiguous().transpose(1, 2)


def keep_sequence_major(transformer: nn.Module) -> nn.Module:
    """Make the residual stream of `transformer` (diffusers' AceStepTransformer1DModel)
    `[B, T, D]`-contiguous; idempotent. Returns the transformer."""
    conv = transformer.proj_in_conv
    if _sequence_major not in conv._forward_hooks.values():
        conv.register_forward_hook(_sequence_major)
    return transformer
