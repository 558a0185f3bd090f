"""The pre-training memory check: does a run fit the GPU's free memory, and if not, which settings would.

`check_fits` compares an estimate (`acestep.gpu.estimate`) with the free memory and raises
TrainingError naming the shortfall, the other processes holding memory and the first settings
that fit. `check_training_memory` runs it in `TrainingSession.start` on CUDA, before the model
loads (`run.skip_vram_check` turns it off). `settings_that_fit` is the search behind the advice,
which `out_of_memory_message` also gives after a step ran out of memory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from pathlib import Path

from acestep.errors import CheckpointError, TrainingError
from acestep.gpu.estimate import DEFAULT_TUNING, GIB, VramEstimate, estimate_vram, gib, re_estimate, vary
from acestep.models.checkpoints import DIT, resolve_model_path
from acestep.models.config import read_dit_config

SUGGESTIONS = 3


@dataclass(frozen=True)
class Suggestion:
    """Settings that fit: `changes` as `--set` texts ("run.gradient_checkpointing=true"), the
    estimate with them, and how many of the search's options they combine."""

    changes: tuple[str, ...]
    estimate: VramEstimate
    options: int


def check_fits(config, free_bytes: int, processes, estimate: VramEstimate) -> None:
    """Raise TrainingError when `estimate` (of `config`) needs more than `free_bytes`.

    `processes` are the other processes holding memory on the GPU (`GpuProcess`: pid, name,
    used_bytes or None). The message gives the estimate by part, the free memory, the shortfall
    in GiB, those processes largest first, the first settings that fit (computed with the
    estimator) and how to override the check.
    """
    needed = estimate.total_bytes
    if needed <= free_bytes:
        return
    lines = [f"Not enough free GPU memory: this run needs about {gib(needed)}, {gib(free_bytes)} is free "
             f"({(needed - free_bytes) / GIB:.2f} GiB short).", _indent(estimate.describe())]
    others = sorted(processes, key=lambda p: -(p.used_bytes or 0))
    if others:
        held = ", ".join(f"{p.name} (pid {p.pid}) {gib(p.used_bytes) if p.used_bytes is not None else 'unknown'}"
                         for p in others)
        lines.append(f"Other processes hold memory on this GPU: {held}. Closing them frees it.")
    else:
        lines.append("No other process holds memory on this GPU.")
    fits = settings_that_fit(config, estimate, free_bytes)
    if fits:
        lines.append("Settings that would fit:")
        for number, fit in enumerate(fits, 1):
            changes = " ".join(f"--set {change}" for change in fit.changes)
            lines.append(f"  {number}. {changes}  (about {gib(fit.estimate.total_bytes)})")
    else:
        lines.append("None of gradient checkpointing, shorter crops, batch 1 with accumulation, a smaller optimizer, "
                     "a 4-bit base or a lower rank makes it fit: free memory on the GPU or use a larger one.")
    lines.append("To start anyway (the estimate may be off by some 15%): --set run.skip_vram_check=true")
    raise TrainingError("\n".join(lines))


def settings_that_fit(config, estimate: VramEstimate, free_bytes: int, limit: int = SUGGESTIONS) -> list[Suggestion]:
    """Up to `limit` Suggestions that fit `free_bytes`, fewest options first, in order of preference.

    Changes are "section.field=value" texts, drawn from: gradient checkpointing on; batch 1 with
    the accumulation raised to keep the effective batch; 8-bit AdamW or Adafactor (with lr 1e-4
    when leaving Prodigy); the frozen weights in NF4 (LoRA and DoRA, uncompiled); 30 s or 15 s
    crops; half or a quarter of the rank (alpha alike). With run.cuda_graphs on, checkpointing and
    accumulation come with the graphs turned off (the rules refuse them together).
    """
    options = _options(config)
    found = []
    for size in (1, 2, 3):
        for combo in itertools.combinations(range(len(options)), size):
            groups = [options[i][0] for i in combo]
            if len(set(groups)) < len(groups):
                continue  # two crops, two optimizers or two ranks at once
            changes: dict[str, object] = {}
            for i in combo:
                changes.update(options[i][1])
            fitted = re_estimate(estimate, vary(config, **{k.replace(".", "__"): v for k, v in changes.items()}))
            if fitted.total_bytes <= free_bytes:
                found.append(Suggestion(tuple(f"{k}={_text(v)}" for k, v in changes.items()), fitted, size))
                if len(found) == limit:
                    return found
    return found


def _options(config) -> list[tuple[str, dict[str, object]]]:
    """(group, changes) in order of preference: what costs speed before what costs quality."""
    options: list[tuple[str, dict[str, object]]] = []
    run, data, opt, adapter = config.run, config.data, config.optimizer, config.adapter
    # run.cuda_graphs refuses checkpointing and accumulation (config_rules): the options that turn
    # one of them on turn the graphs off
    no_graphs: dict[str, object] = {"run.cuda_graphs": False} if run.cuda_graphs else {}
    checkpointing: dict[str, object] = {} if run.gradient_checkpointing else {"run.gradient_checkpointing": True}
    if run.gradient_checkpointing_ratio < 1:  # every layer
        checkpointing["run.gradient_checkpointing_ratio"] = 1.0
    if checkpointing:
        options.append(("checkpointing", {**checkpointing, **no_graphs}))
    if data.batch_size > 1:
        options.append(("batch", {"data.batch_size": 1,
                                  "optimizer.gradient_accumulation": data.batch_size * opt.gradient_accumulation,
                                  **no_graphs}))
    lr = {"optimizer.lr": 1e-4} if opt.name == "prodigy" else {}
    if opt.name in ("adamw", "prodigy"):
        options.append(("optimizer", {"optimizer.name": "adamw8bit", **lr}))
    if opt.name != "adafactor":
        options.append(("optimizer", {"optimizer.name": "adafactor", **lr}))
    if config.model.quantization == "none" and adapter.type != "lokr" and not run.compile:
        options.append(("quantization", {"model.quantization": "nf4"}))
    for seconds in (30.0, 15.0):
        if data.max_seconds is None or data.max_seconds > seconds:
            options.append(("crop", {"data.max_seconds": seconds}))
    for divisor in (2, 4):
        if adapter.rank // divisor >= 4:
            rank, alpha = adapter.rank // divisor, adapter.alpha / divisor
            options.append(("rank", {"adapter.rank": rank, "adapter.alpha": alpha}))
    return options


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --- in the trainer ----------------------------------------------------------------------------------


def check_training_memory(config, fabric, checkpoints_dir=None) -> VramEstimate:
    """The check `TrainingSession.start` runs on CUDA before loading the model: the estimate for
    the checkpoint's config against `torch.cuda.mem_get_info` of this process's device (its CUDA
    context exists already, so the estimate leaves it out). Under DDP every process checks its own
    GPU and all stop together if one does not fit. Returns the estimate; raises TrainingError."""
    import torch

    from acestep.models.checkpoints import DIT, resolve_model_path
    from acestep.models.config import read_dit_config

    model_config = read_dit_config(resolve_model_path(config.model.checkpoint, DIT, checkpoints_dir=checkpoints_dir))
    free, total = torch.cuda.mem_get_info(fabric.device)
    estimate = estimate_vram(config, model_config, world_size=fabric.world_size,
                             capability=torch.cuda.get_device_capability(fabric.device),
                             tuning=replace(DEFAULT_TUNING, cuda_context_bytes=0))
    problem = None
    try:
        check_fits(config, free, other_processes(free, total), estimate)
    except TrainingError as error:
        problem = error
    if fabric.world_size > 1:
        flag = fabric.all_reduce(torch.tensor(1.0 if problem else 0.0, device=fabric.device), reduce_op="max")
        if problem is None and float(flag) > 0:
            problem = TrainingError("Another process of this run lacks GPU memory (its message says which settings "
                                    "would fit); every process stops.")
    if problem is not None:
        raise problem
    return estimate


def other_processes(free_bytes: int, total_bytes: int) -> list:
    """Processes other than this trainer's on the GPU that `torch.cuda.mem_get_info` described:
    the NVML GPU of that total memory (within 2%), the one whose free memory is nearest when
    several match. Empty without NVML."""
    from acestep.gpu.monitor import own_process_ids, read_gpus

    gpus = [g for g in read_gpus().gpus if abs(g.total_bytes - total_bytes) <= 0.02 * total_bytes]
    if not gpus:
        return []
    gpu = min(gpus, key=lambda g: abs(g.free_bytes - free_bytes))
    own = own_process_ids()
    return [p for p in gpu.processes if p.pid not in own]


def out_of_memory_message(config, total_bytes: int | None, step: int, run_dir: Path, error: BaseException) -> str:
    """What to tell the user after running out of GPU memory at `step` of the run in `run_dir`:
    where, the estimate against the GPU's memory (`total_bytes`, None when unknown), the settings
    that would fit, and how to go on."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lines = [f"Out of GPU memory in the step after step {step} ({first_line})."]
    try:
        model_config = read_dit_config(resolve_model_path(config.model.checkpoint, DIT,
                                                          checkpoints_dir=config.model.checkpoints_dir))
    except CheckpointError:
        model_config = None  # the 2B model's shapes
    try:
        estimate = estimate_vram(config, model_config, accelerator="cuda")
    except Exception as exc:  # the message must not fail: say why there is no estimate
        lines.append(f"(No estimate: {exc})")
    else:
        card = f"; this GPU has {total_bytes / GIB:.2f} GiB in all, other programs included" if total_bytes else ""
        lines.append(f"The estimate for these settings is {gib(estimate.total_bytes)}{card}.")
        # The step did not fit: ask for settings that need a fifth less than the estimate (or the card).
        fixed = estimate.parts.get("CUDA context", 0)
        target = fixed + int((min(total_bytes or estimate.total_bytes, estimate.total_bytes) - fixed) * 0.8)
        fits = settings_that_fit(config, estimate, target)
        lines.append("Settings that would fit: " + "; ".join(
            " ".join(f"--set {change}" for change in fit.changes) + f" (about {gib(fit.estimate.total_bytes)})"
            for fit in fits) + "." if fits else "No usual setting lowers it enough: free memory on the GPU.")
    lines.append(f"The state of step {step} is saved in {run_dir}/checkpoints. Close other programs using the GPU "
                 f"and continue with --resume {run_dir}, or start a new run with the settings above.")
    return " ".join(lines)
