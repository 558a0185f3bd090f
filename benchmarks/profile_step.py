"""Where the time of one training step goes: the bare step of benchmarks/training_step.py under
torch.profiler, plus timings of its variants (forward only, without gradient checkpointing, without
the adapter); with `--trainer`, the trainer's own loop under the profiler too (reading and
collating the batch, the objective's draws, the per-step finite-gradient sync, the bookkeeping),
so that what the trainer adds to the bare step shows as the GPU's idle time between its kernels.

    env/bin/python benchmarks/profile_step.py --size 2b --batch 1 --seconds 60 --gradient-checkpointing
    env/bin/python benchmarks/profile_step.py --size 2b --batch 8 --seconds 60 --compile --cuda-graphs --trainer
    env/bin/python benchmarks/profile_step.py --size small           # CPU: checks the script

Prints the ops that take the most host time and the most device time, the number of kernels per
step, and ms/step of each variant. A step whose host time is close to its wall time while the GPU
is mostly idle is bound by Python and kernel launches, not by the GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from common import synchronize  # benchmarks/common.py
from training_step import BareTimer, TrainerTimer, build_benchmark_session  # benchmarks/training_step.py


def timed(device: torch.device, count: int, step) -> float:
    """Milliseconds per call of `step` over `count` calls, after one warm-up call."""
    step()
    synchronize(device)
    began = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - began) / count * 1000


def profiled(timer, name: str, steps: int, rows: int, device: torch.device) -> None:
    """Two warm-up steps of `timer`, then `steps` steps under torch.profiler: their wall time, the
    ops with the most host time and, on a GPU, the most device time, the kernels per step and the
    GPU's busy time per step (what is left of the wall time, the GPU waited)."""
    timer.seconds_per_step(2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    began = time.perf_counter()
    with profile(activities=activities) as prof:
        timer.seconds_per_step(steps)
    wall = (time.perf_counter() - began) / steps * 1000
    events = prof.key_averages()
    print(f"{name}: profiled {steps} steps: {wall:.1f} ms/step wall (profiler on)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    if device.type == "cuda":
        print(events.table(sort_by="self_device_time_total", row_limit=rows))
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1000 / steps
        print(f"{name}: kernels per step: {len(kernels) // steps}, GPU busy {busy:.1f} of {wall:.1f} ms/step")


def forward_only(timer: BareTimer):
    def step():
        with torch.no_grad(), timer.fabric.autocast():
            timer.model(**timer.inputs)
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=3, help="steps under the profiler and per timing")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="regional compile (run.compile)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="the compiled blocks replayed as CUDA graphs (run.cuda_graphs; needs --compile and "
                             "a CUDA GPU)")
    parser.add_argument("--trainer", action="store_true",
                        help="profile the trainer's own loop too (data, the per-step sync, bookkeeping)")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the variants' timings (forward only, adapter disabled, ...: more graphs to compile)")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    args.warmup, args.varied_conditions, args.adapter_dropout = 1, False, False  # fixed shapes, no dropout
    args.gradient_accumulation = 1  # the bare step it profiles steps every batch
    with tempfile.TemporaryDirectory() as tmp:
        session = build_benchmark_session(args, Path(tmp))
        device = session.fabric.device
        timer = BareTimer(session, args.batch)
        profiled(timer, "bare step", args.steps, args.rows, device)
        if args.trainer:
            profiled(TrainerTimer(session, args.batch), "trainer's loop", args.steps, args.rows, device)
        if args.no_variants:
            return 0
        figures = {"step (bare)": timed(device, args.steps, lambda: timer.seconds_per_step(1)),
                   "forward only, no grad": timed(device, args.steps, forward_only(timer))}
        transformer = session.adapter.transformer
        if session.adapter.network is None:  # PEFT LoRA inside the diffusers modules
            transformer.disable_adapters()
            figures["forward only, adapter disabled"] = timed(device, args.steps, forward_only(timer))
            transformer.enable_adapters()
        if args.gradient_checkpointing:
            transformer.disable_gradient_checkpointing()
            figures["step without checkpointing"] = timed(device, args.steps, lambda: timer.seconds_per_step(1))
        for name, ms in figures.items():
            print(f"  {name:32s} {ms:9.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
