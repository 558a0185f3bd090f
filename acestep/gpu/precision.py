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


# The device types autocast knows, asked once at import. `autocast_enabled` runs inside compiled
# blocks (each fused RMSNorm asks it), and before torch 2.13 dynamo cannot trace
# `torch.amp.is_autocast_available`: asked there, it broke every compiled block's graph at each norm
# (seen on torch 2.11, H200, 2026-11-28). `torch.is_autocast_enabled` it folds to a constant.
AUTOCAST_DEVICE_TYPES = frozenset(
    device_type for device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "ipu", "maia",
                                    torch._C._get_privateuse1_backend_name())
    if torch.amp.is_autocast_available(device_type))


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` at this point (False for a device type autocast
    does not know, such as "meta"). Traceable by torch.compile on every supported torch."""
    return device_type in AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type)
