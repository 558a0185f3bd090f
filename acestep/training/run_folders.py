"""Training run folders as the web app's Runs, Train, Listen and Export tabs and `acestep-trainer
runs` read them: their config, their events, how they ended, and the adapters in them. Folders,
TOML and JSON only (no torch), so the UI process stays light. What a run folder holds:
`acestep.training.run_layout`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from acestep.errors import AceStepError
from acestep.files import folder_bytes, size_text
from acestep.jobs import TRAIN_KIND, Job
from acestep.training.run_layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    CONFIG_FILE,
    EVENTS_FILE,
    LOKR_CONFIG,
    LOKR_WEIGHTS,
    NAMED_ADAPTERS,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    TRAINING_METADATA,
)

# Events that say how a run stands; the last one seen wins (a resumed run starts again).
_ENDINGS = {"start": "incomplete", "done": "done", "stop": "stopped", "error": "error"}
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


# What an event's `epoch` is (acestep/training/loop.py): the epochs finished so far, the loop's
# counter, which the command's last line prints ("stopped: step 192, epoch 47")...
_EPOCHS_FINISHED = ("start", "log", "checkpoint", "stop", "done", "error")
# ...or, at an epoch's end, the epoch that ended, counted from 0: one less. A preview (and its
# warning) has either, as it followed a step or an epoch's end: not read.
_EPOCH_ENDED = ("epoch", "validation", "best")


def epochs_finished(events: list[dict]) -> int | None:
    """How many epochs the run had finished at the newest of `events` that says (None before one):
    the epoch the command prints in its log lines and its last line ("stopped: step 192, epoch
    47"), which is also the epoch in progress counted from 0."""
    for event in reversed(events):
        epoch = event.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            continue
        if event.get("type") in _EPOCHS_FINISHED:
            return epoch
        if event.get("type") in _EPOCH_ENDED:
            return epoch + 1
    return None


class RunFolderError(AceStepError):
    """A run or checkpoint picked in the UI is not (or no longer) in the runs folder."""


@dataclass
class RunSummary:
    """One run as the history table shows it. Losses are None when the run has not logged them."""

    name: str
    path: Path
    status: str
    started: float | None = None
    step: int | None = None
    epoch: int | None = None
    final_loss: float | None = None
    best_loss: float | None = None
    best_is_validation: bool = False
    adapter: str = ""
    message: str = ""
    preview_step: int | None = None  # the last preview's step, and what it measured at strength 1:
    preview_effect_db: float | None = None  # the adapter effect
    preview_closer: float | None = None  # how much closer to the songs than strength 0, as a share (0.15: 15%)
    disk_bytes: int = 0  # what the run folder takes on disk (checkpoints, adapters, previews, logs)


def read_events(path: Path) -> list[dict]:
    """The events of an events.jsonl, in order. A line that is not a JSON object (a truncated last
    line of a run still writing, a damaged line) is skipped; a missing file gives []."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return []
    events = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            events.append(event)
    return events


def read_run_config(run_dir: Path) -> dict:
    """The run's config.toml as a dict ({} when missing or unreadable: the table still lists it)."""
    try:
        return tomllib.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def run_folders(runs_dir: Path) -> list[Path]:
    """The run folders directly inside `runs_dir` (those with a config.toml; hidden folders such as
    `.jobs` are skipped), newest first."""
    try:
        children = [child for child in Path(runs_dir).iterdir()
                    if child.is_dir() and not child.name.startswith(".") and (child / CONFIG_FILE).is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(children, key=lambda folder: (_mtime(folder / CONFIG_FILE), folder.name), reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def run_folder(runs_dir: Path, name: str) -> Path:
    """The run folder `name` (a plain folder name, as the UI lists it). Raises RunFolderError
    when the name is not one of the runs (names come from browsers)."""
    name = str(name or "").strip()
    if not name:
        raise RunFolderError("Pick a run first.")
    folder = Path(runs_dir) / name
    if name.startswith(".") or Path(name).name != name or not (folder / CONFIG_FILE).is_file():
        raise RunFolderError(f"There is no run {name!r} in {runs_dir} (a folder with a config.toml).")
    return folder


def events_status(events: list[dict]) -> tuple[str, str]:
    """How the events say the run stands, and the message of that event: done, stopped, error,
    incomplete (started but no ending yet: still running, or killed), or 'no events'."""
    status, message = "no events", ""
    for event in events:
        if event["type"] in _ENDINGS:
            status, message = _ENDINGS[event["type"]], str(event.get("message", ""))
    return status, message


def adapter_text(config: dict) -> str:
    """'lora r64' from a run config's [adapter] section ('' without one)."""
    adapter = config.get("adapter") if isinstance(config.get("adapter"), dict) else {}
    kind, rank = adapter.get("type"), adapter.get("rank")
    return " ".join(part for part in (str(kind) if kind else "", f"r{rank}" if rank is not None else "") if part)


def train_jobs_by_run(jobs: list[Job]) -> dict[Path, Job]:
    """The newest train job of each run folder (a train job reads `<run>/events.jsonl`)."""
    found: dict[Path, Job] = {}
    for job in sorted(jobs, key=lambda job: (job.created, job.id)):
        if job.kind == TRAIN_KIND and job.events_path:
            found[Path(job.events_path).parent.resolve()] = job
    return found


def summarize_run(run_dir: Path, job: Job | None = None) -> RunSummary:
    """The history row of one run: the job's status when a job ran it, else how its events end;
    the start time, the last step and epoch, the last logged loss, and the best loss (the
    validation loss when the run validates)."""
    run_dir = Path(run_dir)
    events = read_events(run_dir / EVENTS_FILE)
    status, message = events_status(events)
    if job is not None:
        status, message = job.status, job.message or message
    summary = RunSummary(run_dir.name, run_dir, status, message=message,
                         adapter=adapter_text(read_run_config(run_dir)), disk_bytes=folder_bytes(run_dir))
    summary.epoch = epochs_finished(events)
    validation: list[float] = []
    for event in events:
        kind = event["type"]
        if kind == "start" and summary.started is None:
            summary.started = _number(event.get("time"))
        if isinstance(event.get("step"), int):
            summary.step = event["step"]
        if kind == "log" and _number(event.get("loss")) is not None:
            summary.final_loss = _number(event["loss"])
        elif kind == "best" and _number(event.get("loss")) is not None:
            summary.best_loss = _number(event["loss"])  # each best is lower than the one before
        elif kind == "validation" and _number(event.get("val_loss")) is not None:
            validation.append(_number(event["val_loss"]))
        elif kind == "preview":
            _read_preview(summary, event)
    summary.best_is_validation = bool(validation)
    if summary.best_loss is None and validation:  # validates, but no best/ yet (before best_after_epochs)
        summary.best_loss = min(validation)
    return summary


def _read_preview(summary: RunSummary, event: dict) -> None:
    """Take the strength-1 figures of a preview event (`acestep.inference.effect`)."""
    from acestep.inference.effect import closer_share, recorded_distances, recorded_effects  # numpy only

    summary.preview_step = event.get("step") if isinstance(event.get("step"), int) else summary.preview_step
    summary.preview_effect_db = recorded_effects(event).get("1")
    summary.preview_closer = closer_share(recorded_distances(event), "1")


def preview_text(summary: RunSummary) -> str:
    """The last preview's figures at strength 1: "0.68 dB, 15% closer", "0.68 dB", or ""."""
    from acestep.inference.effect import closer_text

    parts = [] if summary.preview_effect_db is None else [f"{summary.preview_effect_db:.2f} dB"]
    if summary.preview_closer is not None:
        parts.append(closer_text(summary.preview_closer))
    return ", ".join(parts)


RUN_HEADERS = ["Run", "Status", "Started", "Steps", "Epochs", "Final loss", "Best loss", "Adapter", "Last preview",
               "Disk"]


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def run_row(summary: RunSummary) -> list[str]:
    """The history table's row of one run (RUN_HEADERS)."""
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.started)) if summary.started else ""
    best = ""  # best/ is picked by the validation loss, else by the training loss averaged over epochs
    if summary.best_loss is not None:
        best = _loss(summary.best_loss) + (" (validation)" if summary.best_is_validation else " (epoch average)")
    return [summary.name, summary.status, started, "" if summary.step is None else str(summary.step),
            "" if summary.epoch is None else str(summary.epoch), _loss(summary.final_loss), best, summary.adapter,
            preview_text(summary), size_text(summary.disk_bytes)]


def summarize_runs(runs_dir: Path, jobs: list[Job]) -> list[RunSummary]:
    """Every run under `runs_dir`, newest first, with the status of the newest train job of each."""
    by_run = train_jobs_by_run(jobs)
    return [summarize_run(folder, by_run.get(folder.resolve())) for folder in run_folders(runs_dir)]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---- adapters in a run -------------------------------------------------------------------------

def is_adapter_folder(folder: Path) -> bool:
    """A folder holding a whole saved adapter (PEFT config and weights, or LoKr weights)."""
    folder = Path(folder)
    return ((folder / PEFT_CONFIG).is_file() and (folder / PEFT_WEIGHTS).is_file()) or (folder / LOKR_WEIGHTS).is_file()


def adapter_metadata(folder: Path) -> dict:
    """What training wrote beside the adapter (checkpoint, trigger tag, adapter type, rank, step,
    epoch), or {}."""
    for name in (TRAINING_METADATA, LOKR_CONFIG):
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def adapter_kind(folder: Path) -> str:
    """lora, dora or lokr, from the adapter's files."""
    folder = Path(folder)
    if (folder / LOKR_WEIGHTS).is_file():
        return "lokr"
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}
    return "dora" if isinstance(config, dict) and config.get("use_dora") else "lora"


def is_complete(folder: Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first (temporary and partial folders skipped)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def run_adapters(run_dir: Path) -> list[tuple[str, Path]]:
    """The complete adapters of a run: (name, adapter folder) for final/, best/ and each complete
    checkpoints/step-N/ (newest step first). Names are what `adapter_in_run` takes back."""
    run_dir = Path(run_dir)
    found = [(name, run_dir / name) for name in NAMED_ADAPTERS if is_adapter_folder(run_dir / name)]
    steps = []
    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_FOLDER.match(child.name)
            if match and (child / COMPLETE_MARKER).is_file() and is_adapter_folder(child / ADAPTER_DIR):
                steps.append((int(match.group(1)), child))
    found += [(f"{CHECKPOINTS_DIR}/{child.name}", child / ADAPTER_DIR) for _, child in sorted(steps, reverse=True)]
    return found


def adapter_in_run(run_dir: Path, name: str) -> Path:
    """The adapter folder `name` (final, best, checkpoints/step-N) of the run. Raises
    RunFolderError when the run has no such complete adapter."""
    adapters = dict(run_adapters(run_dir))
    if name not in adapters:
        have = ", ".join(adapters) or "none yet"
        raise RunFolderError(f"The run {Path(run_dir).name} has no complete adapter {name!r} (it has: {have}).")
    return adapters[name]


def adapter_label(name: str, folder: Path) -> str:
    """'final (step 600)', 'best (step 400)', 'step 200' for the checkpoint menu."""
    step = adapter_metadata(folder).get("step")
    match = _STEP_FOLDER.match(Path(name).name)
    if match:
        return f"step {int(match.group(1))}"
    return f"{name} (step {step})" if step not in (None, "") else name
