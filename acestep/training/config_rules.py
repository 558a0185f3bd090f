"""Rules between fields of the training config (each field's own type and bounds are checked
from its metadata in `acestep.training.config_schema`). Each rule returns a problem text or None."""

from __future__ import annotations

from collections.abc import Callable

from acestep.errors import ConfigError
from acestep.training.config_schema import FIELD_META, TrainingConfig, parse_devices
from acestep.training.config_values import check_rules, show

def rule_problems(config: TrainingConfig, bad: set[str], complete: bool) -> list[tuple[str, str]]:
    """Range, choice and cross-field problems of a config whose fields have the right types,
    skipping the fields in `bad` (their type was wrong) and the required ones unless `complete`."""
    problems = []
    for path, meta in FIELD_META.items():
        if path in bad:
            continue
        section, name = path.split(".")
        value = getattr(getattr(config, section), name)
        if "required" in meta:
            if complete and not value.strip():
                problems.append((path, f"{path} is required: {meta['required']}"))
            continue
        message = check_rules(value, meta, path)
        if message:
            problems.append((path, message))
            bad = bad | {path}  # its cross-field rules would only repeat the problem
    for paths, check in _CHECKS:
        if not bad.intersection(paths):
            message = check(config)
            if message:
                problems.append((paths[0], message))
    return problems


def _check_betas(config: TrainingConfig) -> str | None:
    betas = config.optimizer.betas
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        return f"optimizer.betas must be two numbers, each at least 0 and less than 1, found {show(betas)}"
    return None


def _check_devices(config: TrainingConfig) -> str | None:
    try:
        parse_devices(config.run.devices)
    except ConfigError as error:
        return str(error)
    return None


_BAD_NAME_CHARACTERS = set('/\\:*?"<>|')
# Folder names end at 255 bytes (and Windows paths at 260 characters): a run name has room to spare
RUN_NAME_MAX_BYTES = 100


def _check_run_name(config: TrainingConfig) -> str | None:
    name = config.run.name
    if not name:
        return None
    if (name != name.strip() or name.endswith(".") or name in (".", "..")
            or any(char in _BAD_NAME_CHARACTERS or ord(char) < 32 for char in name)):
        return ("run.name must be a folder name: no / \\ : * ? \" < > |, control characters, spaces "
                f"around it or a final dot, found {show(name)}")
    if len(name.encode("utf-8")) > RUN_NAME_MAX_BYTES:
        return (f"run.name is too long for a folder name: {len(name)} characters; keep it to {RUN_NAME_MAX_BYTES} "
                "(accented letters count 2, emoji 4)")
    return None


def _check_modules(config: TrainingConfig) -> str | None:
    modules = config.adapter.modules
    if any(not module.strip() for module in modules) or len(set(modules)) != len(modules):
        return f"adapter.modules must be distinct, non-empty module names, found {show(modules)}"
    return None


def _check_lokr_factor(config: TrainingConfig) -> str | None:
    factor = config.adapter.lokr_factor
    if factor != -1 and factor < 1:
        return f"adapter.lokr_factor must be -1 (automatic) or at least 1, found {factor}"
    return None


def _check_cuda_graphs(config: TrainingConfig) -> str | None:
    run = config.run
    if not run.cuda_graphs:
        return None
    if not run.compile:
        return "run.cuda_graphs replays the compiled blocks' kernels: it needs run.compile=true"
    if run.gradient_checkpointing:
        # The H200 (2026-11-28) failed it with the re-entrant checkpoint around the compiled blocks: the
        # recomputation read graph outputs a later replay had overwritten. Compiled blocks now checkpoint
        # inside their graphs (acestep.training.recompute); the pair stays refused until a GPU has run it
        # (tests/training/test_compilation_cuda.py; benchmarks/gpu_perf.sh, cells
        # 8x60:ckpt:compile:cudagraphs:varied:dropout and 8x60:ckpt:compile:cudagraphs).
        return ("run.cuda_graphs and run.gradient_checkpointing do not go together yet (the pair has not run on a "
                "GPU): set one of them to false")
    if config.optimizer.gradient_accumulation > 1:
        # The blocks' backward graphs hand the adapter its gradients in the graphs' own memory, which the
        # next micro-batch's replay overwrites (torch/_inductor/cudagraph_trees.py names gradient accumulation
        # as the case). The trainer now keeps the gradients in buffers of their own, as torch's message
        # prescribes (acestep.training.compilation.needs_gradient_buffers); the pair stays refused until a
        # GPU has run it (tests/training/test_compilation_cuda.py; benchmarks/gpu_perf.sh, cells
        # 1x60:compile:cudagraphs:varied:dropout:accum2 and 1x60:compile:cudagraphs:accum2).
        return (f"run.cuda_graphs and optimizer.gradient_accumulation={config.optimizer.gradient_accumulation} do not "
                "go together yet (the pair has not run on a GPU): set optimizer.gradient_accumulation=1 (a larger "
                "data.batch_size gives the same effective batch, where memory allows) or run.cuda_graphs=false")
    return None


def _check_quantization(config: TrainingConfig) -> str | None:
    kind = config.model.quantization
    if kind == "none":
        return None
    if config.adapter.type == "lokr":
        return (f"model.quantization={kind} works with adapter.type lora or dora, not lokr (PEFT wraps "
                "4-bit layers, LyCORIS does not here): choose lora or dora, or set model.quantization=none")
    if config.run.compile:
        return (f"model.quantization={kind} and run.compile do not go together (compiled blocks are not "
                "verified with bitsandbytes' 4-bit layers yet): set run.compile=false or model.quantization=none")
    return None


def _check_best_after(config: TrainingConfig) -> str | None:
    run = config.run
    if run.best_after_epochs > run.epochs:
        return (f"run.best_after_epochs ({run.best_after_epochs}) must be at most run.epochs ({run.epochs}): "
                "best/ would never be saved")
    return None


def _check_prodigy_lr(config: TrainingConfig) -> str | None:
    optimizer = config.optimizer
    if optimizer.name == "prodigy" and not 0.1 <= optimizer.lr <= 10:
        return (f"optimizer.lr must be from 0.1 to 10 with prodigy (it multiplies the step size Prodigy "
                f"estimates; 1.0 is usual), found {show(optimizer.lr)}")
    return None


def _check_preview_caption(config: TrainingConfig) -> str | None:
    run = config.run
    if (run.preview_every_epochs or run.preview_every_steps) and not run.preview_caption.strip():
        return ("run.preview_caption is required when previews are on (run.preview_every_epochs or "
                "run.preview_every_steps above 0): the caption to render, with the trigger tag")
    return None


def _check_preview_language(config: TrainingConfig) -> str | None:
    from acestep.dataset.languages import VALID_LANGUAGES

    language = config.run.preview_language
    return None if language in VALID_LANGUAGES else (
        f"run.preview_language must be a language code ACE-Step knows (en, zh, ja, ..., unknown), found "
        f"{show(language)}")


def _check_preview_strengths(config: TrainingConfig) -> str | None:
    strengths = config.run.preview_strengths
    if not strengths or len(set(strengths)) != len(strengths) or not all(0 <= s <= 2 for s in strengths):
        return f"run.preview_strengths must be one or more distinct numbers from 0 to 2, found {show(strengths)}"
    return None


# (fields involved, first one named in the UI; check) for the rules a field's metadata cannot say.
_CHECKS: tuple[tuple[tuple[str, ...], Callable[[TrainingConfig], str | None]], ...] = (
    (("optimizer.betas",), _check_betas),
    (("run.devices",), _check_devices),
    (("run.name",), _check_run_name),
    (("adapter.modules",), _check_modules),
    (("adapter.lokr_factor",), _check_lokr_factor),
    (("model.quantization", "adapter.type", "run.compile"), _check_quantization),
    (("run.cuda_graphs", "run.compile", "run.gradient_checkpointing", "optimizer.gradient_accumulation"),
     _check_cuda_graphs),
    (("run.best_after_epochs", "run.epochs"), _check_best_after),
    (("optimizer.lr", "optimizer.name"), _check_prodigy_lr),
    (("run.preview_caption", "run.preview_every_epochs", "run.preview_every_steps"), _check_preview_caption),
    (("run.preview_language",), _check_preview_language),
    (("run.preview_strengths",), _check_preview_strengths),
)
