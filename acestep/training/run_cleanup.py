"""Freeing the disk a run folder takes: its step checkpoints, or the whole run.

A finished run keeps `run.keep_checkpoints` step checkpoints (adapter and optimizer state, about
0.5 GB each on the 2B model with LoRA rank 64 and AdamW) that only a resume needs; `best/`,
`final/`, the events, the config and the previews are what is used afterwards. Both deletions
refuse while a process trains the run (`run_lock.holder`), and a run that has not finished keeps
its checkpoints unless forced: they are what it resumes from. A folder is renamed to a hidden name
before it is deleted, so an interruption leaves no half run or half checkpoint that looks whole.
Folders and JSON only (no torch): the web app's Runs tab calls these.
"""

from __future__ import annotations

from pathlib import Path

from acestep.files import delete_folder, folder_bytes
from acestep.training.run_folders import RunFolderError, events_status, read_events
from acestep.training.run_layout import CHECKPOINTS_DIR, EVENTS_FILE
from acestep.training.run_lock import holder


def delete_checkpoints(run_dir: str | Path, force: bool = False, how_to_force: str = "pass --force") -> int:
    """Delete the step checkpoints of `run_dir` (best/ and final/ stay); the bytes freed. Raises
    RunFolderError while a process trains the run, or when the run has not finished and `force`
    is not given; that message ends with `how_to_force`, the way the caller's user gives it (the
    command's --force by default; the web app names its checkbox)."""
    run_dir = Path(run_dir)
    _refuse_while_trained(run_dir)
    status, _ = events_status(read_events(run_dir / EVENTS_FILE))
    if status != "done" and not force:
        raise RunFolderError(f"Run {run_dir.name} has not finished ({status}): its checkpoints are what it resumes "
                             f"from. Resume it to the end first, or delete the whole run, or {how_to_force}.")
    folder = run_dir / CHECKPOINTS_DIR
    freed = folder_bytes(folder)
    if folder.is_dir():
        delete_folder(folder)
    return freed


def delete_run(run_dir: str | Path) -> int:
    """Delete the whole run folder; the bytes freed. Raises RunFolderError while a process trains it."""
    run_dir = Path(run_dir)
    _refuse_while_trained(run_dir)
    freed = folder_bytes(run_dir)
    delete_folder(run_dir)
    return freed


def _refuse_while_trained(run_dir: Path) -> None:
    trainer = holder(run_dir)
    if trainer is not None:
        raise RunFolderError(f"Run {run_dir.name} is being trained by {trainer}; stop it first.")
