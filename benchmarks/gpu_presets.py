"""GPU check of the presets: train each on the real-size 2B transformer (or the 4B XL) and compare its
peak memory with the estimate and with the card it is meant for.

    env/bin/python benchmarks/gpu_presets.py                       # on an NVIDIA GPU: every preset, ~1-2 min on an H100
    env/bin/python benchmarks/gpu_presets.py --refit --json out.json  # also fit the estimate's constants
    env/bin/python benchmarks/gpu_presets.py --size tiny           # on a CPU: checks the script, no memory figures
    env/bin/python benchmarks/gpu_presets.py --size xl --presets vram_8gb,vram_12gb --set model.quantization=nf4

For each preset the DiT is built from its config with random weights (nothing downloaded), the
preset's adapter, optimizer, gradient checkpointing, batch and crop (and the `--set` overrides on
top) are set up by the trainer's own parts (benchmarks/common.py), and the trainer's loop runs
`--steps` optimizer steps (with the preset's accumulation) on synthetic tensors of the preset's
crop length and 512 condition tokens. Recorded: `torch.cuda.max_memory_allocated` and
`max_memory_reserved` over the steps, seconds per step, and the bytes autograd keeps for one
forward pass (to check the activation count and which attention kernel CUDA picked). A preset
fails when its peak is above its card's memory less 0.5 GiB (min_vram_gib - 0.5: 8 GB tier
7.5 GiB, 10-12 GB tier 9.5, 16-24 GB tier 15.5) or when the estimate is more than 15% off; the
script then exits with 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import build_session, model_config, write_samples  # benchmarks/common.py

from acestep.gpu.activations import (
    CUDA_KERNELS,
    CUDA_REPEATED_KV_KERNELS,
    CUDA_SM90_KERNELS,
    count_saved_bytes,
    cuda_kernels,
)
from acestep.gpu.estimate import DEFAULT_TUNING, ENCODER_TOKENS, GIB, estimate_vram
from acestep.models.config import parse_model_config
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.data import CroppedSamples
from acestep.training.loop import Trainer
from acestep.training.loss_interval import LossInterval
from acestep.training.presets import BUILTIN_ORDER, apply_named_preset, load_preset
from acestep.training.plan import FRAMES_PER_SECOND

TOLERANCE = 0.15  # the estimate must be within 15% of the measured peak
SPARE_GIB = 0.5  # each preset must leave this much of its card's memory free


def measure_preset(name: str, size: str, steps: int, encoder_tokens: int, work: Path,
                   overrides: tuple[str, ...] = ()) -> dict:
    """Train preset `name` (with `overrides`, "section.field=value" texts) for `steps` optimizer
    steps; its figures as a dict."""
    preset = load_preset(name)
    model = parse_model_config(model_config(size))
    cuda = torch.cuda.is_available()
    config = apply_overrides(apply_named_preset(TrainingConfig(), name), [
        f"data.tensors_dir={work}", f"run.output_dir={work}", "run.log_every_steps=1000",
        f"run.accelerator={'cuda' if cuda else 'cpu'}", *overrides])
    frames = round(config.data.max_seconds * FRAMES_PER_SECOND)
    micro_steps = steps * config.optimizer.gradient_accumulation
    count = micro_steps * config.data.batch_size
    folder = work / f"tensors-{frames}-{count}"
    samples = write_samples(folder, count, frames, model.encoder_hidden_size, encoder_tokens)
    baseline = 0
    if cuda:
        _release()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()  # left over from earlier presets (should be about 0)
    session = build_session(config, model, samples, work)
    session.use_train_set(CroppedSamples(samples, list(range(count)), frames, 0))
    session.batches_per_epoch = micro_steps
    trainer = Trainer(session)
    began = time.perf_counter()
    trainer._run_epoch(LossInterval(session.fabric.device))
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    result = {"preset": " ".join([name, *overrides]), "min_vram_gib": preset.min_vram_gib,
              "steps": trainer.progress.step,
              "seconds_per_step": seconds, "all_steps": trainer.progress.step == steps,
              "peak_allocated": torch.cuda.max_memory_allocated() - baseline if cuda else None,
              "peak_reserved": torch.cuda.max_memory_reserved() - baseline if cuda else None, "baseline": baseline}
    result["saved_measured"] = _saved_bytes(session) if cuda else None
    # The estimate the trainer makes for this GPU (its compute capability picks the attention kernels),
    # plus the three kernel counts for the sliding-window layers, to see which one the GPU really took.
    capability = torch.cuda.get_device_capability() if cuda else None
    estimate = estimate_vram(config, model, accelerator="cuda", encoder_tokens=encoder_tokens, capability=capability)
    flash = estimate_vram(config, model, accelerator="cuda", encoder_tokens=encoder_tokens, kernels=CUDA_SM90_KERNELS)
    activations_only = dataclasses.replace(DEFAULT_TUNING, workspace_scale=0.0)
    result.update(estimate_allocated=estimate.allocated_bytes, estimate_total=estimate.total_bytes,
                  estimate_parts=estimate.parts, estimate_kept_math=_kept(config, model, encoder_tokens, CUDA_KERNELS),
                  estimate_kept_repeated=_kept(config, model, encoder_tokens, CUDA_REPEATED_KV_KERNELS),
                  estimate_kept_flash=_kept(config, model, encoder_tokens, CUDA_SM90_KERNELS),
                  estimate_kept=_kept(config, model, encoder_tokens,
                                      cuda_kernels(capability) if capability else CUDA_KERNELS),
                  estimate_allocated_flash=flash.allocated_bytes,
                  static=estimate_vram(config, model, encoder_tokens=encoder_tokens, capability=capability,
                                       tuning=dataclasses.replace(activations_only, activation_scale=0.0)
                                       ).allocated_bytes,
                  activations=estimate.parts["activations"], workspace=estimate.parts["workspace"])
    del trainer, session
    _release()
    return result


def _saved_bytes(session) -> int:
    """Bytes autograd keeps for one forward pass of the preset's batch (then freed by a backward pass)."""
    batch = next(iter(session.epoch_batches(0, 0))).to(session.fabric.device)
    shapes = [tuple(p.shape) for p in session.adapter.parameters() if p.dim() == 2]
    with count_saved_bytes(session.model, shapes) as measured:
        with session.fabric.autocast():
            loss, _ = session.batch_loss(batch, session.step_generator(0, 0))
    session.fabric.backward(loss)
    session.optimizer.zero_grad(set_to_none=True)
    return measured["saved"]


def _kept(config, model, encoder_tokens, kernels) -> int:
    """What the activation count says one forward pass keeps (checkpointing: the layer inputs)."""
    from acestep.gpu.activations import AdapterShape, ModelShape, activation_bytes
    from acestep.gpu.estimate import _inventory, _model_key

    a = config.adapter
    inventory = _inventory(_model_key(model), a.type, a.rank, a.alpha, a.targets, a.mlp, tuple(a.modules),
                           a.lokr_factor)
    shape = ModelShape.from_config(model)
    adapter = AdapterShape.from_module_names(a.type, a.rank, a.dropout, list(inventory.modules), shape.layers)
    return activation_bytes(shape, adapter, batch=config.data.batch_size,
                            frames=round(config.data.max_seconds * FRAMES_PER_SECOND), encoder_tokens=encoder_tokens,
                            checkpointing=config.run.gradient_checkpointing, kernels=kernels).kept


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def judge(result: dict) -> list[str]:
    """The reasons a measured preset fails (empty: it passes)."""
    failures = []
    if not result["all_steps"]:
        failures.append(f"only {result['steps']} steps had a finite gradient")
    peak = result["peak_allocated"]
    if peak is None:
        return failures
    limit = result["min_vram_gib"] - SPARE_GIB
    if peak > limit * GIB:
        failures.append(f"peak {peak / GIB:.2f} GiB > {limit:.1f} GiB")
    error = result["estimate_allocated"] / peak - 1
    if abs(error) > TOLERANCE:
        failures.append(f"estimate off by {100 * error:+.0f}%")
    return failures


def refit(results: list[dict]) -> dict:
    """Least-squares (relative) fit of activation_scale and workspace_scale so that
    static + a * activations + w * workspace matches the peaks; allocator_fraction from reserved/allocated."""
    rows = [r for r in results if r["peak_allocated"]]
    if not rows:
        return {}
    a = torch.tensor([[r["activations"] / r["peak_allocated"], r["workspace"] / r["peak_allocated"]] for r in rows],
                     dtype=torch.float64)
    b = torch.tensor([(r["peak_allocated"] - r["static"]) / r["peak_allocated"] for r in rows], dtype=torch.float64)
    scale, ws = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.flatten().tolist()
    fraction = statistics.median(r["peak_reserved"] / r["peak_allocated"] - 1 for r in rows)
    errors = [(r["static"] + scale * r["activations"] + ws * r["workspace"]) / r["peak_allocated"] - 1 for r in rows]
    saved = [r["saved_measured"] / r["estimate_kept"] for r in rows if r["estimate_kept"]]
    return {"activation_scale": round(scale, 3), "workspace_scale": round(max(ws, 0.0), 3),
            "allocator_fraction": round(max(fraction, 0.0), 3), "max_error_after_refit": max(map(abs, errors)),
            "saved_measured_over_counted": saved}


def print_table(results: list[dict], device: str) -> None:
    print(f"device {device}, torch {torch.__version__}")
    header = (f"{'preset':16s} {'card':>6s} {'limit':>6s} {'peak':>7s} {'reserved':>8s} {'estimate':>8s} {'error':>6s} "
              f"{'kept':>6s} {'math':>6s} {'rep.':>6s} {'flash':>6s} {'s/step':>7s}  result")
    print(header)
    for r in results:
        peak = r["peak_allocated"]
        fmt = (lambda v: f"{v / GIB:.2f}" if v is not None else "n/a")  # noqa: E731
        error = f"{100 * (r['estimate_allocated'] / peak - 1):+.0f}%" if peak else "n/a"
        failures = judge(r)
        print(f"{r['preset']:16s} {r['min_vram_gib']:6.0f} {r['min_vram_gib'] - SPARE_GIB:6.1f} {fmt(peak):>7s} "
              f"{fmt(r['peak_reserved']):>8s} {r['estimate_allocated'] / GIB:8.2f} {error:>6s} "
              f"{fmt(r['saved_measured']):>6s} {fmt(r['estimate_kept_math']):>6s} "
              f"{fmt(r['estimate_kept_repeated']):>6s} {fmt(r['estimate_kept_flash']):>6s} "
              f"{r['seconds_per_step']:7.2f}  "
              + ("; ".join(failures) if failures else "ok"))
    print("(GiB; card = min_vram_gib of the preset, limit = card - 0.5; peak = torch.cuda.max_memory_allocated over "
          "the steps; estimate = the estimate's allocated part; kept = bytes autograd keeps for one forward pass, as "
          "measured, and as counted with the fp32 math kernel, a fused kernel given repeated K/V heads, or a flash "
          "kernel taking the grouped heads, for the sliding-window layers)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("2b", "xl", "tiny"), default="2b")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a setting over every preset (repeatable), e.g. model.quantization=nf4")
    parser.add_argument("--presets", default=",".join(BUILTIN_ORDER), help="comma list (default: all built-in)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per preset (the second one holds the "
                                                              "optimizer state)")
    parser.add_argument("--encoder-tokens", type=int, default=ENCODER_TOKENS)
    parser.add_argument("--refit", action="store_true", help="print EstimateTuning values fitted to the peaks")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.size != "tiny" and not cuda:
        parser.error(f"the {args.size} check needs a CUDA GPU; --size tiny checks the script on a CPU")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            began = time.perf_counter()
            results.append(measure_preset(name.strip(), args.size, args.steps, args.encoder_tokens, Path(tmp),
                                          tuple(args.overrides)))
            print(f"  {name}: measured in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print_table(results, torch.cuda.get_device_name() if cuda else "cpu")
    fitted = refit(results) if args.refit else {}
    if fitted:
        print(f"refit: EstimateTuning(activation_scale={fitted['activation_scale']}, "
              f"workspace_scale={fitted['workspace_scale']}, allocator_fraction={fitted['allocator_fraction']}) "
              f"-> largest error {100 * fitted['max_error_after_refit']:.1f}%; autograd kept / counted per preset: "
              + ", ".join(f"{v:.3f}" for v in fitted["saved_measured_over_counted"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu",
                                         "torch": torch.__version__, "results": results, "refit": fitted},
                                        indent=2, default=str) + "\n")
    failed = [r["preset"] for r in results if judge(r)]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all presets passed" + ("" if cuda else " (CPU: steps only, no memory comparison)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
