"""Whether a GPU computes in bf16 natively: the one test every "auto" dtype and precision uses;
and whether autocast is on for a device type (`autocast_enabled`).

`torch.cuda.is_bf16_supported()` says yes by default on GPUs that only emulate bf16 (compute
capability below 8.0: Turing's T4 and RTX 20xx, Volta), because bf16 tensors can be made there.
Their matrix products then run without tensor cores and no fused attention kernel takes bf16, so
the model computes far slower than in fp16 (training) or fp32 (inference). `native_bf16` asks
for hardware support only.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def native_bf16(device: torch.device | str = "cuda") -> bool:
    """True for a CUDA (or ROCm) `device` with bf16 arithmetic in hardware; False for any other device."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    # is_bf16_supported asks the current device: make a numbered one current while it asks
    with nullcontext() if device.index is None else torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` at this point (False for a device type autocast
    does not know, such as "meta")."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
