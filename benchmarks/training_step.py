"""Time the trainer's step against a bare PyTorch loop on the same model, batch and precision.

    env/bin/python benchmarks/training_step.py                  # CPU: a small model, prints the overhead
    env/bin/python benchmarks/training_step.py --size 2b --batch 4 --seconds 60 --gradient-checkpointing

The bare loop does only forward, masked MSE, backward, optimizer step and zero_grad on one fixed
batch. The trainer's step adds what a real run needs: reading samples from the tensors folder,
crops and padding, CFG dropout, timestep and noise draws, context latents, gradient clipping and
the finite-gradient check, the scheduler and the loss bookkeeping. The overhead is their ratio.
On a GPU the script also prints samples/s, tokens/s, peak memory and model-FLOPs utilisation.
Model weights are random, built from the real configs: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import CONDITION_TOKENS, SIZES, build_session, model_config, write_samples  # benchmarks/common.py

from acestep.models.config import parse_model_config
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.data import CroppedSamples, collate
from acestep.training.loop import Trainer, _Interval
from acestep.training.objective import context_latents, flow_target, masked_flow_loss, noisy_latents
from acestep.training.session import TrainingSession

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def forward_flops(config: dict, batch: int, frames: int, tokens: int) -> float:
    """Matmul FLOPs of one DiT forward: projections, MLP, attention scores (sliding layers see a
    band of 2w+1 keys), the patch convolutions and the condition embedder."""
    hidden, heads, kv, head_dim = (config[k] for k in ("hidden_size", "num_attention_heads",
                                                       "num_key_value_heads", "head_dim"))
    seq = (frames + 1) // 2
    q, kvw = heads * head_dim, kv * head_dim
    per_layer = 0.0
    for kind in config["layer_types"][: config["num_hidden_layers"]]:
        keys = seq if kind == "full_attention" else min(seq, 2 * config["sliding_window"] + 1)
        self_attn = 2 * seq * (hidden * q * 2 + hidden * kvw * 2) + 4 * seq * keys * q
        cross_attn = 2 * seq * hidden * q * 2 + 2 * tokens * hidden * kvw * 2 + 4 * seq * tokens * q
        mlp = 2 * seq * 3 * hidden * config["intermediate_size"]
        per_layer += self_attn + cross_attn + mlp
    io = 2 * seq * (2 * config["in_channels"] * hidden + 2 * hidden * 64) + 2 * tokens * hidden * hidden
    return batch * (per_layer + io)


def build_benchmark_session(args, work: Path) -> TrainingSession:
    """LoRA rank 64 on attention, AdamW at a constant lr, no dropout, on random weights."""
    config = parse_model_config(model_config(args.size))
    frames = int(args.seconds * 25)
    training = apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={work / 'tensors'}", f"data.batch_size={args.batch}", f"data.max_seconds={args.seconds}",
        f"run.output_dir={work}", "run.log_every_steps=10", "run.save_every_epochs=0", "optimizer.warmup_steps=0",
        "optimizer.scheduler=constant", "adapter.dropout=0",
        f"run.gradient_checkpointing={args.gradient_checkpointing}", f"run.compile={args.compile}"])
    samples = write_samples(work / "tensors", args.batch * max(args.steps, args.warmup) * 2, frames,
                            config.encoder_hidden_size)
    return build_session(training, config, samples, work)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TrainerTimer:
    """Times epochs of the trainer's own loop, each over the next `count` batches of samples."""

    def __init__(self, session: TrainingSession, batch: int):
        self.session, self.batch = session, batch
        self.trainer = Trainer(session)
        self.interval = _Interval(session.fabric.device)
        self.indices, self.position = session.train_set.indices, 0

    def seconds_per_step(self, count: int) -> float:
        s = self.session
        chosen = self.indices[self.position: self.position + count * self.batch]
        self.position = (self.position + count * self.batch) % len(self.indices)
        s.train_set = CroppedSamples(s.samples, chosen, s.train_set.max_frames, 0)
        s.batches_per_epoch = count
        self.trainer.progress.epoch += 1
        self.trainer.progress.batches_done = 0
        synchronize(s.fabric.device)
        began = time.perf_counter()
        self.trainer._run_epoch(self.interval)
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


def measure(session: TrainingSession, args) -> tuple[float, float]:
    """Median seconds per step of (bare loop, trainer), measured in alternating rounds so that a
    change in machine load affects both alike."""
    bare, ours = BareTimer(session, args.batch), TrainerTimer(session, args.batch)
    bare.seconds_per_step(args.warmup)
    ours.seconds_per_step(args.warmup)
    bare_times, our_times = [], []
    for _ in range(args.rounds):
        bare_times.append(bare.seconds_per_step(args.steps))
        our_times.append(ours.seconds_per_step(args.steps))
    return statistics.median(bare_times), statistics.median(our_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="crop length per sample")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of bare loop and trainer")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (for MFU)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        session = build_benchmark_session(args, Path(tmp))
        device = session.fabric.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        bare, ours = measure(session, args)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    frames = int(args.seconds * 25)
    flops = 2 * forward_flops(model_config(args.size), args.batch, frames, CONDITION_TOKENS)  # fwd + activation bwd
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"model {args.size}, batch {args.batch} x {args.seconds:g} s ({frames} frames), "
          f"precision {session.checkpoint_info['precision']}, "
          f"checkpointing {args.gradient_checkpointing}, compile {args.compile}")
    for name, seconds in (("bare PyTorch loop", bare), ("trainer step", ours)):
        print(f"  {name:18s} {seconds * 1000:9.1f} ms/step  {args.batch / seconds:8.2f} samples/s  "
              f"{args.batch * (frames + 1) // 2 / seconds:10.0f} tokens/s  {flops / seconds / 1e12:7.2f} TFLOP/s")
    print(f"  trainer overhead: {100 * (ours / bare - 1):+.1f}%")
    if peak is not None:
        name = torch.cuda.get_device_name()
        peak_tflops = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        mfu = f"{100 * flops / ours / 1e12 / peak_tflops:.1f}%" if peak_tflops else "unknown peak (--peak-tflops)"
        print(f"  peak memory {peak:.1f} GiB, model-FLOPs utilisation {mfu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
