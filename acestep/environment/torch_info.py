"""What torch can use here: version, CUDA, GPUs, bf16, Apple MPS. Imports torch only when asked."""

from __future__ import annotations

import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class TorchSummary:
    """What torch sees. `error` is set when torch is missing or failed; `note` flags a GPU that
    torch cannot use."""

    version: str | None = None
    cuda_available: bool = False
    cuda_version: str | None = None
    gpus: tuple[tuple[str, int], ...] = ()  # (name, total memory in bytes)
    bf16_supported: bool | None = None
    mps_available: bool = False
    error: str | None = None
    note: str | None = None


def error_line(error: BaseException) -> str:
    """'ErrorType: first line of the message' (the whole message can be a page long)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def torch_summary() -> TorchSummary:
    """Ask torch what it can use: version, CUDA, GPUs (name, total bytes), bf16, MPS.

    Never raises an Exception: when torch is missing or fails, the summary's `error` says why.
    Initialises CUDA, so call it in a process that does not need the GPU memory afterwards.
    """
    try:
        import torch
    except Exception as error:
        return TorchSummary(error=error_line(error))
    try:
        return _describe(torch)
    except Exception as error:
        return TorchSummary(version=str(torch.__version__), error=error_line(error))


def _describe(torch) -> TorchSummary:
    from acestep.gpu.precision import native_bf16

    cuda = bool(torch.cuda.is_available())
    gpus: tuple[tuple[str, int], ...] = ()
    bf16 = None
    if cuda:
        gpus = tuple((torch.cuda.get_device_name(i),
                      int(torch.cuda.get_device_properties(i).total_memory))
                     for i in range(torch.cuda.device_count()))
        bf16 = native_bf16()  # in hardware: an emulated bf16 is not used for training
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    note = None
    if not cuda and shutil.which("nvidia-smi"):
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        note = (f"an NVIDIA driver is installed but torch ({build}) cannot use it; "
                f"for GPU training re-run the installer with --cuda")
    return TorchSummary(version=str(torch.__version__), cuda_available=cuda,
                        cuda_version=torch.version.cuda, gpus=gpus, bf16_supported=bf16,
                        mps_available=mps, note=note)
