"""Checkpoints in a run folder: written completely or not at all.

    run/checkpoints/step-000120/
        adapter/            the adapter as users load it (PEFT folder, or LoKr weights), fp32: a
                            resume reads the weights back from it (with a moving average it
                            holds the average, and state.* the weights)
        state.json          optimizer, scheduler, counters, RNG states, data position (structure)
        state.safetensors   ... and their tensors (no pickle anywhere)
        COMPLETE            written last; a folder without it is ignored

A checkpoint is assembled in a hidden temporary folder and renamed into place, so a crash, a
SIGKILL or a full disk in the middle leaves the previous checkpoints untouched and usable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from acestep.errors import TrainingError
from acestep.files import delete_folder, is_disk_full, recover_replaced_folder, replaced_folder
from acestep.training.state import load_state, save_state

from acestep.training.run_layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    NAMED_ADAPTERS,
    SUPERSEDED_DIR,
    TRAINING_METADATA,
)
from acestep.training.run_folders import complete_checkpoints, is_complete


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """`acestep.files.replaced_folder`, with a full disk raised as a `TrainingError` that says the
    previous files are intact."""
    try:
        with replaced_folder(final) as tmp:
            yield tmp
    except (OSError, SafetensorError) as exc:  # safetensors reports the OS's errors as its own
        if is_disk_full(exc):
            raise TrainingError(
                f"The disk is full: could not write {final}. The previous checkpoints are intact; free some "
                "space and resume the run."
            ) from exc
        raise


def write_checkpoint(run_dir: Path, step: int, state: dict, save_adapter_into) -> Path:
    """Write `checkpoints/step-N/`: `save_adapter_into(folder)` writes the adapter, `state` the
    rest; the completion marker goes last. Returns the checkpoint folder."""
    final = Path(run_dir) / CHECKPOINTS_DIR / checkpoint_name(step)
    with atomic_directory(final) as tmp:
        save_adapter_into(tmp / ADAPTER_DIR)
        save_state(state, tmp)
        marker = {"step": step, "epoch": state.get("epoch"), "time": time.time()}
        with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(marker) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest complete checkpoints, then the leftovers. Each checkpoint
    is renamed to a hidden name before it is deleted, so a kill in the middle of a deletion leaves
    a hidden folder that the next clean-up removes, never a visible half checkpoint."""
    for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        delete_folder(old, ignore_errors=True)
    remove_leftovers(run_dir)


def remove_leftovers(run_dir: Path) -> None:
    """Delete what interrupted writes and deletions leave in `checkpoints/`: hidden `.step-*`
    folders, and `step-*` folders without the completion marker (a deletion cut short by an older
    version of this code). Complete checkpoints are never touched, and one that a kill left moved
    aside while it was being rewritten is put back first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return
    for aside in root.glob(".step-*.old-*"):  # a rewrite of a checkpoint killed mid-swap: put it back
        final = root / aside.name[1:].split(".old-")[0]
        if not final.exists() and is_complete(aside):
            recover_replaced_folder(final)
    for leftover in root.iterdir():
        hidden = leftover.name.startswith(".step-")
        if leftover.is_dir() and (hidden or (leftover.name.startswith("step-") and not is_complete(leftover))):
            shutil.rmtree(leftover, ignore_errors=True)


def set_aside_later_work(run_dir: Path, step: int, continuing: bool) -> Path | None:
    """Before a run resumes from its checkpoint at `step`, move what the run wrote after that step
    out of its way, into `superseded/after-step-N-TIME/` (nothing is deleted): the checkpoints of
    later steps, which `--resume RUN` would otherwise take as the newest and pruning would keep
    over the new ones, and final/ and best/ of a later step; and final/ whatever its step when the
    run goes on training (`continuing`), since it would no longer be the run's last adapter.

    Each move is one rename, so a kill in the middle leaves every folder whole, in one place or the
    other; the next resume moves the rest. Returns the superseded folder, or None when nothing
    was in the way.
    """
    run_dir = Path(run_dir)
    later = [folder for folder in complete_checkpoints(run_dir) if _step_of_checkpoint(folder) > step]
    named = [run_dir / name for name in NAMED_ADAPTERS if (run_dir / name).is_dir()]
    later += [folder for folder in named
              if (continuing and folder.name == "final") or (_step_of_adapter(folder) or 0) > step]
    if not later:
        return None
    aside = run_dir / SUPERSEDED_DIR / f"after-step-{step:06d}-{time.strftime('%Y%m%d-%H%M%S')}"
    for folder in later:
        target = aside / folder.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, target)
    return aside


def _step_of_checkpoint(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def _step_of_adapter(folder: Path) -> int | None:
    """The step an adapter folder was saved at (its training metadata), None when it does not say."""
    try:
        step = json.loads((folder / TRAINING_METADATA).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def read_checkpoint(folder: Path) -> dict:
    """The training state of a complete checkpoint; `TrainingError` for a partial one."""
    folder = Path(folder)
    if not is_complete(folder):
        raise TrainingError(f"{folder} is not a complete checkpoint (no {COMPLETE_MARKER} marker): it was "
                            "interrupted while being written. Resume from the run folder to use the last complete one.")
    return load_state(folder)


def resolve_resume(path: Path) -> tuple[Path, Path]:
    """`--resume` accepts a run folder (its newest complete checkpoint) or one checkpoint folder.
    Returns (run folder, checkpoint folder)."""
    path = Path(path).resolve()
    if is_complete(path) and path.parent.name == CHECKPOINTS_DIR:
        return path.parent.parent, path
    latest = latest_checkpoint(path)
    if latest is None:
        raise TrainingError(f"{path} holds no complete checkpoint to resume from (looked in {path / CHECKPOINTS_DIR}).")
    return path, latest
