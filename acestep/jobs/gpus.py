"""Which GPUs a job takes, from what the job will run on (no torch: the UI and the job manager use it).

A job's GPUs are a frozenset of CUDA device indices, or `ALL_GPUS` when it cannot say (a training
run on `run.devices = "auto"`, a job stored before jobs recorded their GPUs). An empty set means
the job takes no GPU (a CPU job). The indices are those the job's process sees: when
CUDA_VISIBLE_DEVICES is set in the app's environment (the jobs inherit it), "cuda:1" is the second
GPU it lists, and so is "GPU 1" here; nothing is remapped.
"""

from __future__ import annotations

import re
from typing import Literal

from acestep.errors import JobError

ALL_GPUS = "all"
GpuSet = frozenset[int] | Literal["all"]  # what a job takes: CUDA indices, or every GPU
NO_GPU: frozenset[int] = frozenset()

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def is_gpu_index(value: object) -> bool:
    """Whether `value` is a CUDA device index (an int from 0; not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def job_gpus(device_text: str | None) -> frozenset[int]:
    """The CUDA indices a caption, preprocess or Listen job on device `device_text` takes:
    "cuda:1" -> {1}; "cuda", "auto" and "" (none given) -> {0}, since these commands then run on
    torch's "cuda", which is GPU 0; "mps" -> {0} (a Mac's one GPU); "cpu" -> the empty set (not a
    GPU job). Case and surrounding spaces are ignored. Raises JobError for any other text."""
    device = (device_text or "").strip().lower()
    if device == "cpu":
        return NO_GPU
    if device in ("", "auto", "mps"):
        return frozenset({0})
    match = _CUDA.match(device)
    if match is None:
        raise JobError(f"Device {device_text!r}: expected auto, cuda, cuda:N, mps or cpu.")
    return frozenset({int(match[1] or 0)})


def training_gpus(devices: int | str) -> GpuSet:
    """The GPUs a training run on this machine takes, from its `run.devices` (as Lightning reads it,
    `parse_devices`): a count n -> GPUs 0..n-1; a list ("0,2") -> those; "auto" -> ALL_GPUS
    (Lightning takes every GPU it finds). A training run is always a GPU job, even on
    run.accelerator "cpu" (the queue stays as safe as before). Raises ConfigError naming
    run.devices for a value it does not take."""
    from acestep.training.config_schema import parse_devices  # the training config, only when needed

    parsed = parse_devices(devices)
    if parsed == "auto":
        return ALL_GPUS
    return frozenset(parsed) if isinstance(parsed, list) else frozenset(range(parsed))


def shared_gpus(first: GpuSet, second: GpuSet) -> GpuSet:
    """The GPUs both take: ALL_GPUS only when both take every GPU; the empty set when they share none."""
    if not first or not second:
        return NO_GPU
    if first == ALL_GPUS:
        return second
    if second == ALL_GPUS:
        return first
    return first & second


def gpus_text(gpus: GpuSet) -> str:
    """'GPU 1', 'GPUs 0,1', 'all GPUs', or '' for none."""
    if gpus == ALL_GPUS:
        return "all GPUs"
    if not gpus:
        return ""
    ordered = sorted(gpus)
    return f"GPU {ordered[0]}" if len(ordered) == 1 else "GPUs " + ",".join(str(index) for index in ordered)
