"""Whether the disk of a run folder can hold what the run has yet to write.

A run keeps `run.keep_checkpoints` step checkpoints and writes each new one whole before it deletes
the oldest, so up to keep + 1 are on disk at once; `best/` and `final/` (the adapter alone) are
written beside their previous version before the swap. After the first optimizer step the
optimizer's state exists, so the size of a checkpoint is known to the byte: the tensors of the
training state (adapter, optimizer, moving average) and the adapter folder.

A full disk in the middle of a run stops it cleanly (the previous checkpoint stays, and the run
resumes from it), so a shortfall is a warning at the start, while someone watches, not a refusal:
`disk_warning` says what is short and what to do before the night is lost. Before a run starts,
the VRAM estimate's exact count of the adapter and the optimizer's state gives the same sizes
(`acestep.gpu.estimate.VramEstimate.checkpoint_sizes`), and `disk_summary` says them beside the
estimate (`acestep-trainer gpu --config`, the Train tab). No torch here: the web app calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from acestep.files import free_space, size_text
from acestep.training.run_folders import complete_checkpoints
from acestep.training.run_layout import NAMED_ADAPTERS


def tensor_bytes(value) -> int:
    """The bytes of the tensors and arrays in `value` (nested mappings, lists and tuples): torch
    tensors (`numel() * element_size()`) and NumPy arrays (`nbytes`)."""
    if callable(getattr(value, "element_size", None)) and callable(getattr(value, "numel", None)):
        return value.numel() * value.element_size()
    if isinstance(getattr(value, "nbytes", None), int):
        return value.nbytes
    if isinstance(value, Mapping):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item) for item in value)
    return 0


@dataclass(frozen=True)
class CheckpointSizes:
    checkpoint: int  # one step checkpoint: its adapter folder and its training state
    adapter: int  # an adapter folder alone (best/, final/)


def run_folder_of(output_dir: str | Path, name: str) -> Path:
    """The folder a run writes: run.output_dir/run.name, or run.output_dir while the name is left
    to the start time."""
    return Path(output_dir) / name if name else Path(output_dir)


def bytes_to_come(run_dir: Path, sizes: CheckpointSizes, keep: int) -> int:
    """The most the run folder grows by from now: the step checkpoints it does not hold yet of the
    keep + 1 it holds at once, the named adapters it does not hold yet, and one named adapter being
    replaced."""
    checkpoints = max(0, keep + 1 - len(complete_checkpoints(run_dir)))
    named = sum(not (Path(run_dir) / name).is_dir() for name in NAMED_ADAPTERS) + 1
    return checkpoints * sizes.checkpoint + named * sizes.adapter


def disk_summary(run_dir: Path, sizes: CheckpointSizes, keep: int) -> str:
    """One line for the estimate before a run: what a checkpoint weighs, what the run writes at
    most, the free space of the disk it goes to, and what to do when that is less."""
    need, free = bytes_to_come(run_dir, sizes, keep), free_space(run_dir)
    line = (f"Disk: a checkpoint is about {size_text(sizes.checkpoint)}; the run writes up to {size_text(need)} "
            f"({keep + 1} checkpoints at once, best/ and final/) into {run_dir}, whose disk has {size_text(free)} "
            "free")
    if free >= need:
        return line + "."
    return line + f": {size_text(need - free)} short. " + _remedies(keep, need - free) + "."


def disk_warning(run_dir: Path, sizes: CheckpointSizes, keep: int) -> str | None:
    """What to do when the free space of `run_dir`'s disk is less than `bytes_to_come`; None
    when it is enough."""
    need = bytes_to_come(run_dir, sizes, keep)
    free = free_space(run_dir)
    if free >= need:
        return None
    checkpoint, adapter = size_text(sizes.checkpoint), size_text(sizes.adapter)
    return (f"the disk of {run_dir} has {size_text(free)} free, and this run will write up to {size_text(need)} "
            f"more: {keep + 1} checkpoints of {checkpoint} at once while the newest is written, best/ and final/ of "
            f"{adapter} each. It will stop when the disk is full, keeping its last checkpoint to resume from. To "
            f"train to the end, {_remedies(keep, need - free, again=True)}")


def _remedies(keep: int, short: int, again: bool = False) -> str:
    remedies = [f"free {size_text(short)} or more"]
    if keep > 1:
        remedies.append(f"lower run.keep_checkpoints (now {keep})")
    remedies.append(f"{'start the run again with' if again else 'set'} run.output_dir on another disk")
    return f"{', '.join(remedies[:-1])} or {remedies[-1]}"
