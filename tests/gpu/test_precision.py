"""`native_bf16` (acestep/gpu/precision.py): bf16 only where the GPU computes it in hardware, so a
Turing card (T4, RTX 20xx), where torch emulates bf16, trains in fp16 and previews in fp32."""

import contextlib

import pytest
import torch

from acestep.gpu.precision import native_bf16
from acestep.inference.preview import _pick_dtype as preview_dtype
from acestep.preprocess.pipeline import _pick_dtype as preprocess_dtype
from acestep.training.config import TrainingConfig
from acestep.training.session import compute_dtype, resolve_precision


class Asked(list):
    entered: list


def pretend_cuda_gpu(monkeypatch, capability_major: int) -> Asked:
    """torch as it answers on one CUDA GPU of that compute capability; returns the
    `including_emulation` values is_bf16_supported was asked with."""
    asked = Asked()

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return capability_major >= 8 or including_emulation  # bf16 tensors can be made on any CUDA GPU

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    asked.entered = entered
    return asked


@pytest.mark.parametrize(("major", "precision", "dtype", "inference"), [
    (7, "16-mixed", torch.float16, torch.float32),  # Turing / Volta: bf16 emulated only
    (8, "bf16-mixed", torch.bfloat16, torch.bfloat16),  # Ampere and later
])
def test_auto_precision_follows_bf16_in_hardware(monkeypatch, major, precision, dtype, inference):
    asked = pretend_cuda_gpu(monkeypatch, major)
    assert native_bf16("cuda") is (major >= 8) and native_bf16("cuda:1") is (major >= 8)
    assert asked.entered == [torch.device("cuda:1")]  # a numbered GPU is asked as the current one
    assert asked and not any(asked)  # never the emulation answer
    chosen, weights = resolve_precision(TrainingConfig(), "cuda")
    assert (chosen, weights, compute_dtype(chosen, weights)) == (precision, dtype, dtype)
    cuda = torch.device("cuda")
    assert preview_dtype("auto", cuda) == inference and preprocess_dtype(None, cuda) == inference


def test_no_cuda_device_has_native_bf16(monkeypatch):
    pretend_cuda_gpu(monkeypatch, 9)
    assert not native_bf16("cpu") and not native_bf16("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not native_bf16("cuda")


def test_the_compute_dtype_is_autocast_s_under_mixed_precision():
    assert compute_dtype("bf16-mixed", torch.float32) == torch.bfloat16
    assert compute_dtype("16-mixed", torch.float32) == torch.float16
    assert compute_dtype("32-true", torch.float32) == torch.float32


def test_autocast_enabled_asks_only_what_torch_compile_traces(monkeypatch):
    """`autocast_enabled` runs inside compiled blocks (the fused RMSNorm). Before torch 2.13 dynamo
    cannot trace `torch.amp.is_autocast_available`, and a call to it broke every block's graph at
    each norm (torch 2.11 on an H200); the device types are asked once, at import."""
    from acestep.gpu import precision

    def untraceable(device_type):
        raise AssertionError("is_autocast_available asked on a call")

    monkeypatch.setattr(torch.amp, "is_autocast_available", untraceable)
    assert not precision.autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.autocast_enabled("cpu")
        assert not precision.autocast_enabled("meta")  # a device type autocast does not know
    assert {"cpu", "cuda"} <= precision.AUTOCAST_DEVICE_TYPES and "meta" not in precision.AUTOCAST_DEVICE_TYPES
    compiled = torch.compile(lambda x: x * 2 if precision.autocast_enabled("cpu") else x, fullgraph=True,
                             backend="eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(torch.ones(2)).tolist() == [2.0, 2.0]
    assert compiled(torch.ones(2)).tolist() == [1.0, 1.0]
