"""Time the trainer's step against the official ACE-Step trainer's loop on the same model, samples and
precision, in the same process.

    env/bin/python benchmarks/training_step.py                  # CPU: a small model, checks the script
    env/bin/python benchmarks/training_step.py --size 2b --batch 8 --seconds 60 --gradient-checkpointing --compile

Loops, timed in alternating rounds on the same samples of a tensors folder:
- trainer step: the trainer's own epoch loop (reading and cropping samples, CFG dropout, fp32
  timestep and noise draws, masked loss, clipping with the finite-gradient check, the scheduler,
  the loss bookkeeping without a per-step sync), with gradient checkpointing and regional compile
  as asked; `--no-finite-check` takes every gradient for finite without asking the GPU, which
  measures what that check, the step's one host-device sync, costs; `--gradient-accumulation N`
  steps the optimizer every N batches (the figures stay per batch);
- reference loop: the official trainer's loop (benchmarks/reference_loop.py: per-step `.item()`,
  timesteps drawn in bf16, loss over all frames, no compile) on the same model;
- bare PyTorch loop (`--bare`): forward, masked MSE, backward, optimizer step on one fixed batch,
  the floor of what a step costs.
Printed per loop: ms/step, samples/s, tokens/s (DiT tokens: 12.5 per second of audio), TFLOP/s
and, on a GPU, model-FLOPs utilisation (benchmarks/flops.py) and peak memory; then the trainer's
speed-up over the reference loop. `--json` writes the same figures; running out of GPU memory
writes `"status": "oom"` there and exits with 3. Weights are random, built from the real configs:
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import (CONDITION_TOKENS, SIZES, build_session, is_out_of_memory, model_config, synchronize,
                    varied_condition_lengths, write_samples)
from flops import StepFlops, peak_tflops, step_flops
from reference_loop import ReferenceLoop
from variants import VARIANTS
from torch.utils.data import DataLoader

from acestep.models.config import parse_model_config
from acestep.training.compilation import eagerly
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.data import CroppedSamples, collate
from acestep.training.loop import Trainer
from acestep.training.loss_interval import LossInterval
from acestep.training.objective import context_latents, flow_target, masked_flow_loss, noisy_latents
from acestep.training.session import TrainingSession

LOOP_LABELS = {"trainer": "trainer step", "reference": "reference loop", "bare": "bare PyTorch loop"}
OOM_EXIT = 3


def condition_lengths(args) -> list[int]:
    """The condition length of each benchmark sample: CONDITION_TOKENS, or with `--varied-conditions`
    lengths from 300 to 500 tokens (`common.varied_condition_lengths`)."""
    count = args.batch * max(args.steps, args.warmup) * 2
    return varied_condition_lengths(count) if args.varied_conditions else [CONDITION_TOKENS] * count


def build_benchmark_session(args, work: Path) -> TrainingSession:
    """LoRA rank 64 on attention, AdamW at a constant lr, on random weights; no adapter dropout
    unless `--adapter-dropout` (the trainer's default then). CUDA graphs with gradient
    checkpointing or accumulation are pairs the trainer refuses until a GPU has run them: the
    session gets them anyway, since this is where they are found out."""
    config = parse_model_config(model_config(args.size))
    frames = int(args.seconds * 25)
    dropout = TrainingConfig().adapter.dropout if args.adapter_dropout else 0
    refused = args.gradient_checkpointing or args.gradient_accumulation > 1
    training = apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={work / 'tensors'}", f"data.batch_size={args.batch}", f"data.max_seconds={args.seconds}",
        f"run.output_dir={work}", "run.log_every_steps=10", "run.save_every_epochs=0", "optimizer.warmup_steps=0",
        "optimizer.scheduler=constant", f"adapter.dropout={dropout}",
        f"run.gradient_checkpointing={args.gradient_checkpointing}", f"run.compile={args.compile}",
        f"optimizer.gradient_accumulation={args.gradient_accumulation}",
        f"run.cuda_graphs={args.cuda_graphs and not refused}"])
    if args.cuda_graphs and refused:  # past the config rules (docstring)
        training.run.cuda_graphs = True
    lengths = condition_lengths(args)
    samples = write_samples(work / "tensors", len(lengths), frames, config.encoder_hidden_size, lengths)
    return build_session(training, config, samples, work)


class SampleCursor:
    """Hands out sample indices in order, wrapping around: each loop walks the same sequence."""

    def __init__(self, count: int):
        self.count, self.position = count, 0

    def take(self, n: int) -> list[int]:
        chosen = [(self.position + i) % self.count for i in range(n)]
        self.position = (self.position + n) % self.count
        return chosen


class TrainerTimer:
    """Times epochs of the trainer's own loop, each over the next `count` batches of samples.
    `finite_check` False: every gradient is taken for finite without asking the GPU, to measure
    what the step's one host-device sync costs (a measurement only: a non-finite step would train)."""

    def __init__(self, session: TrainingSession, batch: int, finite_check: bool = True):
        self.session, self.batch, self.optimizer = session, batch, session.optimizer
        self.trainer = Trainer(session)
        if not finite_check:
            self.trainer._gradient_is_finite = lambda norm: True
        self.interval = LossInterval(session.fabric.device)
        self.cursor = SampleCursor(len(session.samples))

    def seconds_per_step(self, count: int) -> float:
        s = self.session
        s.use_train_set(CroppedSamples(s.samples, self.cursor.take(count * self.batch), s.train_set.max_frames, 0))
        s.batches_per_epoch = count
        self.trainer.progress.epoch += 1
        self.trainer.progress.batches_done = 0
        synchronize(s.fabric.device)
        began = time.perf_counter()
        self.trainer._run_epoch(self.interval)
        synchronize(s.fabric.device)
        return (time.perf_counter() - began) / count


class ReferenceTimer:
    """Times the official trainer's loop over the next `count` batches of the same samples."""

    def __init__(self, session: TrainingSession, batch: int):
        self.session, self.batch = session, batch
        self.loop = ReferenceLoop(session)
        self.optimizer = self.loop.optimizer
        self.cursor = SampleCursor(len(session.samples))

    def seconds_per_step(self, count: int) -> float:
        s = self.session
        chosen = CroppedSamples(s.samples, self.cursor.take(count * self.batch), s.train_set.max_frames, 0)
        loader = DataLoader(chosen, batch_size=self.batch, shuffle=True, collate_fn=self.loop.collate,
                            num_workers=s.config.data.num_workers, pin_memory=s.fabric.device.type == "cuda")
        # the official trainer does not compile: blocks compiled for the trainer run eagerly here
        with eagerly():
            synchronize(s.fabric.device)
            began = time.perf_counter()
            for batch in loader:
                self.loop.step(batch)
            synchronize(s.fabric.device)
        return (time.perf_counter() - began) / count


class BareTimer:
    """Times forward + masked MSE + backward + optimizer step on one fixed batch."""

    def __init__(self, session: TrainingSession, batch_size: int):
        self.fabric, self.model, self.optimizer = session.fabric, session.model, session.optimizer
        batch = collate([session.train_set[i] for i in range(batch_size)]).to(self.fabric.device)
        x0, dtype = batch.target_latents, session.model_dtype
        noise = torch.randn_like(x0)
        t = torch.full((x0.shape[0],), 0.5, device=self.fabric.device)
        self.inputs = {"hidden_states": noisy_latents(x0, noise, t).to(dtype), "timestep": t.to(dtype),
                       "timestep_r": t.to(dtype), "encoder_hidden_states": batch.encoder_hidden_states.to(dtype),
                       "context_latents": context_latents(session.silence_latent, x0.shape[1], x0.shape[0]).to(dtype)}
        self.target, self.mask = flow_target(x0, noise), batch.frame_mask

    def seconds_per_step(self, count: int) -> float:
        synchronize(self.fabric.device)
        began = time.perf_counter()
        for _ in range(count):
            with self.fabric.autocast():
                prediction = self.model(**self.inputs).sample
                loss, _ = masked_flow_loss(prediction, self.target, self.mask, check_empty_samples=False)
            self.fabric.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.fabric.device)
        return (time.perf_counter() - began) / count


def optimizer_state_bytes(optimizer) -> int:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor))


def measure(timers: dict, warmup: int, rounds: int, steps: int, device: torch.device) -> dict[str, dict]:
    """Median seconds per step of each loop over alternating rounds (a change in machine load
    affects all alike), and on a GPU each loop's peak memory without the other loops' optimizer
    state (each loop has its own optimizer; a real run holds one); `warmup_seconds`: each loop's
    warm-up steps together, compiling included."""
    warmups = dict.fromkeys(timers, 0.0)
    for name, timer in timers.items():  # step by step, printed: a cell cut off while compiling shows how far it got
        for index in range(warmup):
            warmups[name] += timer.seconds_per_step(1)
            print(f"warm-up {name} step {index + 1}/{warmup}: {warmups[name]:.1f} s so far", flush=True)
    times = {name: [] for name in timers}
    peaks = dict.fromkeys(timers, 0)
    for _ in range(rounds):
        for name, timer in timers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(timer.seconds_per_step(steps))
            if device.type == "cuda":
                own = getattr(timer.optimizer, "optimizer", timer.optimizer)
                others = {id(getattr(t.optimizer, "optimizer", t.optimizer)): t.optimizer for t in timers.values()}
                others.pop(id(own), None)
                spare = sum(optimizer_state_bytes(o) for o in others.values())
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() - spare)
    return {name: {"seconds_per_step": statistics.median(times[name]), "rounds": times[name],
                   "warmup_seconds": warmups[name], "warmup_steps": warmup,
                   "peak_memory_bytes": peaks[name] if device.type == "cuda" else None} for name in timers}


def compile_report() -> dict:
    """What torch.compile did in this process so far: the graphs it compiled, how many times inductor
    ran a compiled graph without recording it as a CUDA graph (each time with a "skipping cudagraphs"
    warning in the log, which says why; with `--cuda-graphs` such a cell measures less than it says)
    and the stages that took longest (dynamo's stage timers, each summed over the graphs; stages
    nest, so they overlap)."""
    names, values = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    stages = sorted(((name, float(value)) for name, value in zip(names, values, strict=True)), key=lambda s: -s[1])
    counters = torch._dynamo.utils.counters
    return {"graphs": counters["stats"]["unique_graphs"], "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
            "stage_seconds": dict(stages[:8])}


def print_compile_report(report: dict) -> None:
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["stage_seconds"].items())
    skips = report.get("cudagraph_skips")
    skipped = f"; {skips} times a graph ran without CUDA graphs (see \"skipping cudagraphs\" above)" if skips else ""
    print(f"torch.compile: {report['graphs']} graphs{skipped}; longest stages: {stages or 'none'}", flush=True)


def report_compile_when_stopped() -> None:
    """On SIGTERM (training_grid.py stops a cell past its limit with it), print `compile_report` and
    exit at once: a cell cut off while compiling still says which stage held it."""
    def stop(signum, frame):
        print(f"stopped (signal {signum}) after {time.monotonic() - STARTED:.0f} s", flush=True)
        print_compile_report(compile_report())
        os._exit(128 + signum)  # not an exception: torch.compile catches those and could run on eagerly
    signal.signal(signal.SIGTERM, stop)


STARTED = time.monotonic()


def loop_figures(measured: dict, batch: int, frames: int, flops: StepFlops, peak: float | None) -> dict:
    seconds = measured["seconds_per_step"]
    tflops = flops.total / seconds / 1e12
    memory = measured["peak_memory_bytes"]
    return {**measured, "samples_per_second": batch / seconds, "tokens_per_second": batch * -(-frames // 2) / seconds,
            "tflops": tflops, "mfu": tflops / peak if peak else None,
            "peak_memory_gib": memory / 2**30 if memory is not None else None}


def _giga(flops: float) -> str:
    return f"{flops / 1e12:.2f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.3f} GFLOP"


def print_report(report: dict) -> None:
    r = report
    print(f"device {r['device']}, torch {r['torch']}, model {r['size']}, batch {r['batch']} x {r['seconds']:g} s "
          f"({r['frames']} frames), precision {r['precision']}, checkpointing {r['gradient_checkpointing']}, "
          f"compile {r['compile']}, CUDA graphs {r['cuda_graphs']}, adapter dropout {r['adapter_dropout']:g}, "
          + ("" if r["finite_check"] else "no finite-gradient check, ")
          + (f"gradient accumulation {r['gradient_accumulation']} (figures per batch), "
             if r["gradient_accumulation"] > 1 else "")
          + f"condition tokens {'-'.join(str(n) for n in sorted(set(r['condition_token_range'])))}"
          + "".join(f", variant {name}" for name in r["variants"]))
    print(f"  {r['attention']}")
    peak = f"{r['peak_tflops']:g} TFLOP/s dense bf16" if r["peak_tflops"] else "peak unknown (--peak-tflops)"
    print(f"  model FLOPs per step {_giga(r['flops_forward'] + r['flops_backward'])} (forward "
          f"{_giga(r['flops_forward'])}, backward {_giga(r['flops_backward'])}); {peak}")
    for name, f in r["loops"].items():
        mfu = f"MFU {100 * f['mfu']:5.1f}%" if f["mfu"] is not None else "MFU n/a"
        memory = f"peak {f['peak_memory_gib']:.1f} GiB" if f["peak_memory_gib"] is not None else ""
        print(f"  {LOOP_LABELS[name]:18s} {f['seconds_per_step'] * 1000:9.1f} ms/step  {f['samples_per_second']:8.2f} "
              f"samples/s  {f['tokens_per_second']:10.0f} tokens/s  {f['tflops']:7.2f} TFLOP/s  {mfu}  {memory}  "
              f"warm-up {f['warmup_seconds']:.1f} s ({f['warmup_steps']} steps)")
    if r.get("speedup_over_reference"):
        print(f"  speed-up over the reference loop: {r['speedup_over_reference']:.2f}x")
    if r.get("reserved_gib") is not None:
        print(f"  GPU memory the process reserved at most: {r['reserved_gib']:.1f} GiB (every loop, the CUDA graphs' "
              "pools included)")
    if "compile_report" in r:
        print_compile_report(r["compile_report"])
    if "bare" in r["loops"]:
        ratio = r["loops"]["trainer"]["seconds_per_step"] / r["loops"]["bare"]["seconds_per_step"]
        print(f"  trainer overhead over the bare loop: {100 * (ratio - 1):+.1f}%")


def run(args, work: Path) -> dict:
    """Build the session, time the loops, return the report (see the module docstring)."""
    began = time.monotonic()
    session = build_benchmark_session(args, work)
    print(f"model {args.size} built in {time.monotonic() - began:.1f} s", flush=True)
    variants = [variant for variant in VARIANTS if getattr(args, variant.flag)]
    for variant in variants:
        variant.apply(session.model)
    device = session.fabric.device
    timers = {"trainer": TrainerTimer(session, args.batch, finite_check=not args.no_finite_check)}
    if not args.no_reference:
        timers["reference"] = ReferenceTimer(session, args.batch)
    if args.bare:
        timers["bare"] = BareTimer(session, args.batch)
    measured = measure(timers, args.warmup, args.rounds, args.steps, device)
    frames = int(args.seconds * 25)
    config, a = model_config(args.size), session.config.adapter
    lengths = condition_lengths(args)  # FLOPs at their mean: batches padded to their longest do a little more
    tokens = round(statistics.mean(lengths))
    flops = step_flops(config, args.batch, frames, tokens, a.rank, a.targets, a.mlp,
                       parse_model_config(config).encoder_hidden_size)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    loops = {key: loop_figures(value, args.batch, frames, flops, peak) for key, value in measured.items()}
    report = {"status": "ok", "device": name, "torch": torch.__version__, "size": args.size, "batch": args.batch,
              "seconds": args.seconds, "frames": frames, "condition_tokens": tokens,
              "condition_token_range": [min(lengths), max(lengths)], "adapter_dropout": session.config.adapter.dropout,
              "precision": session.checkpoint_info["precision"], "gradient_checkpointing": args.gradient_checkpointing,
              "compile": args.compile, "cuda_graphs": args.cuda_graphs, "finite_check": not args.no_finite_check,
              "gradient_accumulation": args.gradient_accumulation,
              "variants": [variant.flag for variant in variants],
              "attention": session.attention, "flops_forward": flops.forward, "flops_backward": flops.backward,
              "peak_tflops": peak, "loops": loops,
              # the whole process's, all loops and CUDA graph pools (recorded in the warm-up) included
              "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else None}
    if args.compile:
        report["compile_report"] = compile_report()
    if "reference" in loops:
        report["speedup_over_reference"] = loops["reference"]["seconds_per_step"] / loops["trainer"]["seconds_per_step"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="crop length per sample")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the loops")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="regional compile of the trainer's model "
                                                               "(the reference loop runs it eagerly)")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the compiled blocks as CUDA graphs "
                                                                   "(run.cuda_graphs; needs --compile, a CUDA GPU)")
    parser.add_argument("--varied-conditions", action="store_true",
                        help="samples whose condition lengths vary from 300 to 500 tokens, as songs' do (else 400)")
    parser.add_argument("--adapter-dropout", action="store_true",
                        help="train with the adapter's default dropout (else none)")
    parser.add_argument("--no-finite-check", action="store_true",
                        help="skip the trainer's per-step check that the gradient is finite (its one host-device "
                             "sync), to measure what it costs")
    parser.add_argument("--gradient-accumulation", type=int, default=1, metavar="N",
                        help="the trainer steps its optimizer every N batches (the reference loop every batch; "
                             "figures per batch)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    for variant in VARIANTS:  # benchmarks/variants.py
        parser.add_argument(variant.option, dest=variant.flag, action="store_true", help=variant.help)
    parser.add_argument("--bare", action="store_true", help="also time the bare PyTorch loop")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (for MFU)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.cuda_graphs and not args.compile:
        parser.error("--cuda-graphs replays the compiled blocks: it needs --compile")
    if args.gradient_accumulation < 1:
        parser.error(f"--gradient-accumulation must be at least 1, found {args.gradient_accumulation}")
    if args.compile:
        report_compile_when_stopped()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = run(args, Path(tmp))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        report = {"status": "oom", "size": args.size, "batch": args.batch, "seconds": args.seconds,
                  "gradient_checkpointing": args.gradient_checkpointing, "compile": args.compile, "message": first}
        print(f"out of memory: batch {args.batch} x {args.seconds:g} s, checkpointing {args.gradient_checkpointing}, "
              f"compile {args.compile}: {first}")
    else:
        print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return OOM_EXIT if report["status"] == "oom" else 0


if __name__ == "__main__":
    raise SystemExit(main())
