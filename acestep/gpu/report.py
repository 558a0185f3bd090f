"""What `acestep-trainer gpu` prints: the GPUs (`acestep.gpu.monitor`), the preset recommended
for each, and, for a training config, its estimated peak memory against each GPU's free memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from acestep.errors import AceStepError, CheckpointError


def gpu_command_report(config_path: Path | None, checkpoints_dir: Path | None = None,
                       overrides: Sequence[str] = (), report=None) -> str:
    """The text of `acestep-trainer gpu [--config FILE] [--set k=v ...] [--checkpoints-dir DIR]`.

    Lists the GPUs and their processes, the recommended preset per GPU (quick_test without one)
    and, when `config_path` or `overrides` are given, the estimate by part for that config (with
    `overrides`; without a file the defaults with `overrides`, as `train` starts from them; paths
    relative to the working folder as `train` takes them) and whether it fits each GPU's free
    memory now, with settings that would when it does not. The model's shapes come from the
    checkpoint's config.json when it is on disk, else from the 2B model (said in the text).
    `report` is a `SystemGpuReport` to use instead of reading NVML (tests). Raises ConfigError
    for a bad config file or override (as `train` does: data.tensors_dir is required); never
    raises for a missing GPU or model.
    """
    from acestep.gpu.monitor import format_report, read_gpus
    from acestep.training.presets import recommendation_message

    report = read_gpus() if report is None else report
    lines = [format_report(report), ""]
    if report.gpus:
        lines += [f"GPU {gpu.index} ({gpu.name}): recommended preset {recommendation_message(gpu.total_bytes)}"
                  for gpu in report.gpus]
    else:
        lines.append(f"Recommended preset: {recommendation_message(None)}")
    if config_path is not None or overrides:
        path = Path(config_path) if config_path is not None else None
        lines += ["", *_config_lines(path, checkpoints_dir, overrides, report)]
    return "\n".join(lines)


def _config_lines(config_path: Path | None, checkpoints_dir, overrides, report) -> list[str]:
    from acestep.gpu.estimate import GIB, estimate_vram, gib
    from acestep.gpu.fit import settings_that_fit
    from acestep.training.config import apply_overrides, config_from_dict, load_config, resolve_paths
    from acestep.training.disk_space import disk_summary, run_folder_of

    # without a file, the defaults the --set values fill in, as `train` starts from them
    config = load_config(config_path) if config_path else config_from_dict({}, complete=False)
    config = resolve_paths(apply_overrides(config, list(overrides)), Path.cwd())
    model_config, note = _model_config(config, checkpoints_dir)
    # The attention kernels, so the activations, depend on the GPU generation: one estimate per
    # compute capability, the first GPU's printed (unknown capability: the worst case).
    estimates = {capability: estimate_vram(config, model_config, capability=capability)
                 for capability in [gpu.compute_capability for gpu in report.gpus] or [None]}
    first = next(iter(estimates.values()))
    title = config_path or "(the defaults with " + " ".join(f"--set {o}" for o in overrides) + ")"
    lines = [f"Training config {title}:", first.describe()]
    if note:
        lines.append(note)
    run_dir = run_folder_of(config.run.output_dir, config.run.name)
    lines.append(disk_summary(run_dir, first.checkpoint_sizes, config.run.keep_checkpoints))
    lines += _plan_lines(config, len(report.gpus))
    if not report.gpus:
        lines.append("No NVIDIA GPU to compare it with.")
    for gpu in report.gpus:
        estimate = estimates[gpu.compute_capability]
        spare = gpu.free_bytes - estimate.total_bytes
        if spare >= 0:
            lines.append(f"GPU {gpu.index}: fits ({gib(gpu.free_bytes)} free, {spare / GIB:.2f} GiB to spare).")
            continue
        lines.append(f"GPU {gpu.index}: does not fit now ({gib(gpu.free_bytes)} free, {-spare / GIB:.2f} GiB short).")
        fits = settings_that_fit(config, estimate, gpu.free_bytes)
        lines += [f"  would fit: {' '.join('--set ' + c for c in fit.changes)} (about {gib(fit.estimate.total_bytes)})"
                  for fit in fits] or ["  no usual setting makes it fit; free memory on the GPU."]
    return lines


def _plan_lines(config, gpus_found: int) -> list[str]:
    """The run's plan over its tensors folder (`acestep.training.plan`), or why there is none."""
    from acestep.training.plan import plan_for

    if not config.data.tensors_dir:
        return ["Run plan: set data.tensors_dir to see the songs, batches and steps of the run."]
    try:
        plan = plan_for(config, gpus_found)
    except AceStepError as error:
        return [f"Run plan: {error}"]
    return [f"Run plan: {plan.describe()}", *(f"  note: {note}" for note in plan.notes())]


def _model_config(config, checkpoints_dir):
    """(the checkpoint's AceStepModelConfig or None for the 2B default, a note or "")."""
    from acestep.models.checkpoints import DIT, resolve_model_path
    from acestep.models.config import read_dit_config

    folder = checkpoints_dir or (Path(config.model.checkpoints_dir) if config.model.checkpoints_dir else None)
    try:
        return read_dit_config(resolve_model_path(config.model.checkpoint, DIT, checkpoints_dir=folder)), ""
    except CheckpointError as error:
        first_line = str(error).splitlines()[0]
        return None, (f"(model.checkpoint {config.model.checkpoint!r} is not on disk: {first_line} "
                      "The estimate is for the 2B ACE-Step 1.5 DiT.)")
