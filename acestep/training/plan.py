"""A training run's shape before it starts, from the tensors folder's frame counts alone.

How many songs train and how many validate, the batches and optimizer steps of an epoch, the steps
of the whole run, the effective batch, and how much of the songs' audio the crops show per epoch.
Plain arithmetic, no torch: the Train tab and `acestep-trainer gpu --config` show the plan before a
model is loaded, and the session takes its own counts from the same functions, so what they show is
what the run does (its start message prints the same numbers).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acestep.errors import TrainingError

FRAMES_PER_SECOND = 25  # latent frames per second of audio (48 kHz / 1920)
# "A style LoRA usually needs a few thousand optimizer steps" (TRAINING_GUIDE.md, How long to train).
USUAL_STEPS = (2_000, 4_000)


def split_train_validation(count: int, validation_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of sample indices; at least one training sample, and one validation sample
    whenever the split is above 0."""
    indices = list(range(count))
    if validation_split <= 0 or count < 2:
        return indices, []
    random.Random(seed).shuffle(indices)
    held = min(count - 1, max(1, round(count * validation_split)))
    return sorted(indices[held:]), sorted(indices[:held])


def batches_per_epoch(samples: int, batch_size: int, world_size: int = 1) -> int:
    """The batches each process trains per epoch: ceil(samples / batch_size), divided among the
    processes and rounded down under DDP (the last incomplete round is dropped so every process
    takes the same number of steps; `acestep.training.data.EpochBatches` cuts them)."""
    batches = -(-samples // batch_size)
    return batches // world_size if world_size > 1 else batches


def optimizer_steps_per_epoch(num_batches: int, accumulation: int) -> int:
    """ceil(num_batches / accumulation): a partial accumulation at the end of an epoch is flushed with a step.

    Raises TrainingError when there are no batches or the accumulation is below 1.
    """
    if int(num_batches) != num_batches or num_batches < 1:
        raise TrainingError(f"an epoch must have at least one batch, got {num_batches!r} (is the dataset empty?)")
    if int(accumulation) != accumulation or accumulation < 1:
        raise TrainingError(f"gradient accumulation must be an integer >= 1, got {accumulation!r}")
    return -(-int(num_batches) // int(accumulation))


def total_optimizer_steps(num_batches: int, accumulation: int, epochs: int, max_steps: int | None = None) -> int:
    """The optimizer steps of a whole run: steps per epoch × epochs, capped at `max_steps` when given.

    Training stops at whichever comes first. Raises TrainingError for epochs < 1 or max_steps < 1.
    """
    if int(epochs) != epochs or epochs < 1:
        raise TrainingError(f"epochs must be an integer >= 1, got {epochs!r}")
    steps = optimizer_steps_per_epoch(num_batches, accumulation) * int(epochs)
    if max_steps is None:
        return steps
    if int(max_steps) != max_steps or max_steps < 1:
        raise TrainingError(f"max_steps must be an integer >= 1 (or unset), got {max_steps!r}")
    return min(steps, int(max_steps))


def process_count(devices: int | str, num_nodes: int, gpus_found: int) -> int:
    """The processes of a run on `run.devices` of `run.num_nodes` machines: the count given, the
    GPUs listed, or for "auto" the GPUs found here (one process without a GPU)."""
    from acestep.training.config_schema import parse_devices

    parsed = parse_devices(devices)
    if parsed == "auto":
        parsed = max(1, gpus_found)
    return (len(parsed) if isinstance(parsed, list) else parsed) * num_nodes


def manifest_frames(tensors_dir: str | Path) -> list[int]:
    """The frame counts of a tensors folder's samples, from its manifest (no torch). Raises
    PreprocessError naming the manifest when there is none or it cannot be read."""
    from acestep.preprocess.manifest import read_manifest

    return [sample.frames for sample in read_manifest(Path(tensors_dir)).samples]


def crop_frames(max_seconds: float | None) -> int | None:
    """`data.max_seconds` in latent frames (None: whole samples)."""
    return round(max_seconds * FRAMES_PER_SECOND) if max_seconds else None


@dataclass(frozen=True)
class RunPlan:
    """The counts of a run; `describe()` says them in a paragraph, `notes()` what deserves a look."""

    train_indices: tuple[int, ...]  # the samples that train and those held out, as positions in the manifest
    validation_indices: tuple[int, ...]
    world_size: int
    batch_size: int
    accumulation: int
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    max_steps: int | None
    early_stopping_patience: int
    crop_frames: int | None
    training_frames: int  # the training songs' frames, whole
    shown_frames: int  # ... and what one pass's crops show of them
    repeats: int = 1  # passes over the training songs per epoch (data.repeats)

    @property
    def training_samples(self) -> int:
        return len(self.train_indices)

    @property
    def validation_samples(self) -> int:
        return len(self.validation_indices)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulation * self.world_size

    @property
    def epochs_run(self) -> float:
        """Epochs the run trains before `max_steps` stops it (all of `epochs` without one)."""
        return min(self.epochs, self.total_steps / self.steps_per_epoch)

    def describe(self) -> str:
        processes = f" x {self.world_size} processes" if self.world_size > 1 else ""
        validation = (f", {self.validation_samples} held out for the validation loss" if self.validation_samples
                      else ", none held out for validation")
        stop = (f" (run.max_steps stops it after {self.epochs_run:.1f} of the {self.epochs} epochs)"
                if self.max_steps is not None and self.total_steps < self.steps_per_epoch * self.epochs
                else f" ({self.epochs} epochs)")
        passes = f"each song {self.repeats} times (data.repeats), " if self.repeats > 1 else ""
        text = (f"{self.training_samples} song(s) train{validation}. Per epoch: {passes}{self.batches_per_epoch} "
                f"batch(es) of {self.batch_size}{' per process' if self.world_size > 1 else ''}, "
                f"{self.steps_per_epoch} optimizer step(s); effective batch {self.effective_batch} "
                f"({self.batch_size} x {self.accumulation} accumulation{processes}). {self.total_steps:,} "
                f"optimizer steps in all{stop}.")
        if self.early_stopping_patience:
            text += (f" Early stopping after {self.early_stopping_patience} epochs without improvement, "
                     f"{self.early_stopping_patience * self.steps_per_epoch:,} steps.")
        if self.crop_frames and self.shown_frames < self.training_frames:
            each = "per pass, a new crop each pass" if self.repeats > 1 else "per epoch, a new crop each epoch"
            text += (f" Crops of {self.crop_frames / FRAMES_PER_SECOND:g} s show "
                     f"{100 * self.shown_frames / self.training_frames:.0f}% of the songs' "
                     f"{self.training_frames / FRAMES_PER_SECOND / 60:.1f} minutes {each}.")
        return text

    def notes(self) -> list[str]:
        """What in these counts usually is not meant: an accumulation no epoch fills, a run far
        from the usual number of steps."""
        notes = []
        if self.batches_per_epoch < self.accumulation:
            notes.append(f"An epoch has {self.batches_per_epoch} batch(es), fewer than optimizer.gradient_accumulation "
                         f"{self.accumulation}: every step sums {self.batches_per_epoch}, so the effective batch is "
                         f"{self.batches_per_epoch * self.batch_size * self.world_size}, not "
                         f"{self.effective_batch}. Set optimizer.gradient_accumulation to "
                         f"{self.batches_per_epoch} or less.")
        low, high = USUAL_STEPS
        if self.total_steps < low and self.max_steps is None:
            epochs = math.ceil(low / self.steps_per_epoch)
            notes.append(f"{self.total_steps:,} steps is below the {low:,} to {high:,} a style LoRA usually needs "
                         f"(How long to train in TRAINING_GUIDE.md): run.epochs={epochs:,} would give {low:,}; "
                         "fine for a quick test.")
        return notes


def plan_run(config, frames: Sequence[int], world_size: int = 1) -> RunPlan:
    """The plan of a run of `config` (a TrainingConfig) over samples of these frame counts (the
    tensors folder's manifest, in its order) on `world_size` processes. Raises TrainingError when
    the run would have no batch: the message says why."""
    train, validation = split_train_validation(len(frames), config.data.validation_split,
                                               config.data.validation_seed)
    repeats = config.data.repeats
    batches = batches_per_epoch(len(train) * repeats, config.data.batch_size, world_size)
    if batches == 0:
        seen = f" x {repeats} repeats" if repeats > 1 else ""
        raise TrainingError(f"{config.data.tensors_dir} gives no training batch: {len(train)} training sample(s)"
                            f"{seen} for {world_size} process(es) with batch size {config.data.batch_size}.")
    accumulation = config.optimizer.gradient_accumulation
    crop = crop_frames(config.data.max_seconds)
    whole = [frames[i] for i in train]
    return RunPlan(
        train_indices=tuple(train), validation_indices=tuple(validation), world_size=world_size,
        batch_size=config.data.batch_size, accumulation=accumulation, batches_per_epoch=batches,
        steps_per_epoch=optimizer_steps_per_epoch(batches, accumulation),
        total_steps=total_optimizer_steps(batches, accumulation, config.run.epochs, config.run.max_steps),
        epochs=config.run.epochs, max_steps=config.run.max_steps,
        early_stopping_patience=config.run.early_stopping_patience, crop_frames=crop,
        training_frames=sum(whole), shown_frames=sum(min(n, crop) if crop else n for n in whole), repeats=repeats)


def plan_for(config, gpus_found: int) -> RunPlan:
    """`plan_run` over `config.data.tensors_dir`'s manifest, on the processes `run.devices` gives
    with `gpus_found` GPUs here. Raises PreprocessError for a folder without a readable manifest,
    TrainingError for a run without a batch, ConfigError for bad devices."""
    processes = process_count(config.run.devices, config.run.num_nodes, gpus_found)
    return plan_run(config, manifest_frames(config.data.tensors_dir), processes)
