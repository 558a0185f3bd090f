"""A bug-report bundle of one training run, for `acestep-trainer bug-report RUN_DIR`.

One .zip holding what a maintainer needs to reproduce a problem of the run, and nothing private or
big (no weights, no audio, no captions or lyrics):

    <run>-report/summary.txt       the run, how it stands, what the bundle holds and what it leaves out
    <run>-report/environment.txt   the environment check of `launch.py --check` (Python, packages, torch,
                                   CUDA, GPUs and their memory), the OS and the trainer's version
    <run>-report/config.toml       the run's config, run.preview_caption and run.preview_lyrics left out
    <run>-report/events.jsonl      the run's events (the last EVENT_LINES lines)
    <run>-report/train-log.txt     the end of the log of the web app's job that trained the run, if any
    <run>-report/run-folder.txt    names and sizes of what the run folder holds, not their content
    <run>-report/dataset.txt       the tensors folder's manifest in figures (samples, durations, model)

The home folder is written `~` in every text. Standard library and the torch-free readers of run
folders, jobs and manifests at import; torch is imported by the environment check, when the report
is written.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import acestep
from acestep.environment.report import EnvironmentReport, check_environment, format_report
from acestep.errors import AceStepError, PreprocessError
from acestep.files import folder_bytes, size_text, tail_lines, write_failure
from acestep.jobs.store import JobStore
from acestep.preprocess.manifest import read_manifest
from acestep.training.run_folders import read_run_config, run_folder, summarize_run, train_jobs_by_run
from acestep.training.run_layout import CONFIG_FILE, EVENTS_FILE

EVENT_LINES = 2000  # the end of a long run's events: its last hours, and how it ended
LOG_LINES = 1000
TAIL_BYTES = 4 * 2**20  # at most this much of the end of a file is read for its last lines
LISTING_DEPTH = 4  # run/checkpoints/step-N/adapter/<files>
LISTING_ENTRIES = 40  # per folder; the rest is counted
JOBS_FOLDER = ".jobs"  # the web app's jobs, beside its runs (acestep.ui.context.Workspace.jobs)
NOT_LISTED = ("tensorboard",)  # its file names carry the machine's name; its size is listed
LEFT_OUT_SETTINGS = ("preview_caption", "preview_lyrics")  # [run] texts the user wrote
REPORT_SUFFIX = "-report.zip"


class BugReportError(AceStepError):
    """The bug report cannot be written (the output folder is not writable, the disk is full)."""


@dataclass(frozen=True)
class BugReport:
    """A written bug report: where, how big, and the names inside."""

    path: Path
    size: int
    members: tuple[str, ...]


def report_run_folder(run_dir: str | os.PathLike) -> Path:
    """`run_dir` made absolute, when it is a run folder (it holds a config.toml). Raises the
    RunFolderError of `acestep-trainer runs` ("There is no run ... (a folder with a config.toml)")."""
    path = Path(os.path.abspath(Path(run_dir).expanduser()))  # "runs/a/.." is "runs", links stay
    return run_folder(path.parent, path.name)


def default_report_path(run_dir: Path) -> Path:
    """`<run>-report.zip` beside the run folder."""
    return run_dir.parent / f"{run_dir.name}{REPORT_SUFFIX}"


def write_bug_report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None,
                     environment: EnvironmentReport | None = None) -> BugReport:
    """Write the bug report of the run in `run_dir` to `output` (default: `<run>-report.zip` beside the
    run; a folder: that name inside it). An existing file is never replaced: `name-2.zip`, `name-3.zip`,
    ... is taken instead. `environment` defaults to `check_environment()` (10-30 s: it imports every
    package). Raises RunFolderError when `run_dir` is not a run folder, BugReportError when the file
    cannot be written (nothing is left of it then)."""
    run_dir = report_run_folder(run_dir)
    target = Path(output).expanduser() if output is not None else default_report_path(run_dir)
    if target.is_dir():
        target = target / default_report_path(run_dir).name
    members = _report_members(run_dir, environment or check_environment())
    folder = f"{run_dir.name}-report"
    path, handle = _reserve(target)
    try:
        with handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name, text in members.items():
                bundle.writestr(f"{folder}/{name}", home_as_tilde(text))
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BugReportError(f"{path}: cannot write the bug report ({write_failure(exc)}).") from None
        raise
    return BugReport(path, path.stat().st_size, tuple(f"{folder}/{name}" for name in members))


def _reserve(target: Path):
    """Create `target`, or `stem-2.zip`, `stem-3.zip`, ...: the first that does not exist (creating it
    reserves it, so two reports at once never share a file). Returns the path and the open file."""
    candidate, number = target, 1
    while True:
        try:
            if number == 1:
                target.parent.mkdir(parents=True, exist_ok=True)
            return candidate, open(candidate, "xb")
        except FileExistsError:
            if not target.parent.is_dir():  # mkdir found a file where the folder should be
                raise BugReportError(f"{target.parent} is a file, not a folder: give another --output.") from None
            number += 1
            candidate = target.with_name(f"{target.stem}-{number}{target.suffix}")
        except OSError as exc:
            raise BugReportError(f"{candidate}: cannot write the bug report ({write_failure(exc)}); "
                                 "give another file with --output.") from None


def home_as_tilde(text: str, home: str | os.PathLike | None = None) -> str:
    """`text` with the home folder (`home`, default the user's) written `~`, as a path, a resolved
    path, with forward slashes and JSON-escaped: '/home/ann/runs' -> '~/runs'. Only a whole folder
    name matches ('/home/ann' is not replaced in '/home/anna'); a home of '/' is left alone."""
    home = Path(home if home is not None else Path.home())
    if home.parent == home:
        return text
    plain = {str(home), os.path.realpath(home), home.as_posix()}
    variants = plain | {json.dumps(value)[1:-1] for value in plain}
    pattern = "|".join(re.escape(value) for value in sorted(variants, key=len, reverse=True))
    flags = re.IGNORECASE if os.name == "nt" else 0
    return re.sub(rf"(?<![\w.\-])(?:{pattern})(?![\w.\-])", "~", text, flags=flags)


def _report_members(run_dir: Path, environment: EnvironmentReport) -> dict[str, str]:
    """Every text of the bundle, by name; summary.txt says what was found and left out."""
    notes: list[str] = []
    jobs = JobStore(run_dir.parent / JOBS_FOLDER)
    job = train_jobs_by_run(jobs.read_all()).get(run_dir.resolve())
    members = {"environment.txt": environment_text(environment),
               CONFIG_FILE: config_text(run_dir, notes),
               EVENTS_FILE: _tail_text(run_dir / EVENTS_FILE, EVENT_LINES, "events", notes)}
    if job is not None:
        members["train-log.txt"] = _tail_text(jobs.log_path(job.id), LOG_LINES, f"log of the web app's job {job.id}",
                                              notes)
    else:
        notes.append("No web-app job trained this run, so there is no log file: paste what `acestep-trainer "
                     "train` printed into the issue.")
    members["run-folder.txt"] = folder_listing(run_dir)
    dataset = dataset_text(read_run_config(run_dir), notes)
    if dataset is not None:
        members["dataset.txt"] = dataset
    return {"summary.txt": summary_text(run_dir, job, list(members), notes), **members}


def environment_text(environment: EnvironmentReport) -> str:
    """The trainer's version, the OS, then the environment check as `launch.py --check` prints it."""
    return (f"acestep-lora-trainer {acestep.__version__}\n"
            f"OS: {platform.platform()} ({platform.machine() or 'unknown machine'})\n\n"
            + format_report(environment) + "\n")


def config_text(run_dir: Path, notes: list[str]) -> str:
    """The run's config.toml with the preview caption and lyrics replaced by their length; a file that
    is not valid TOML is kept as it is (it may be the problem)."""
    try:
        raw = (run_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        notes.append(f"{CONFIG_FILE} is not valid TOML ({exc}); it is included as it is.")
        return raw
    import tomli_w  # a required package, not needed at import

    section = data.get("run") if isinstance(data.get("run"), dict) else {}
    left_out = [name for name in LEFT_OUT_SETTINGS if isinstance(section.get(name), str) and section[name]]
    for name in left_out:
        section[name] = f"<left out: {len(section[name])} characters>"
    if left_out:
        notes.append(f"{CONFIG_FILE}: {', '.join('run.' + name for name in left_out)} left out (only their "
                     "length is given).")
    return f"# {CONFIG_FILE} of the run {run_dir.name}\n" + tomli_w.dumps(data)


def _tail_text(path: Path, count: int, what: str, notes: list[str]) -> str:
    lines, cut = tail_lines(path, count, TAIL_BYTES)
    if not path.is_file():
        notes.append(f"The {what} file {path} does not exist.")
    elif cut:
        notes.append(f"{path.name}: the last {len(lines)} lines of the {what} (the file holds more).")
    return "\n".join(lines) + ("\n" if lines else "")


def folder_listing(run_dir: Path) -> str:
    """What the run folder holds, as an indented tree of names and sizes: folders down to
    LISTING_DEPTH levels, at most LISTING_ENTRIES entries per folder (the rest counted)."""
    lines = [f"{run_dir}/  {size_text(folder_bytes(run_dir))}"]
    _list_folder(run_dir, 1, lines)
    return "\n".join(lines) + "\n"


def _list_folder(folder: Path, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        lines.append(f"{indent}(unreadable: {write_failure(exc)})")
        return
    for entry in entries[:LISTING_ENTRIES]:
        try:
            if entry.is_symlink():
                lines.append(f"{indent}{entry.name} -> {os.readlink(entry.path)}")
            elif entry.is_dir():
                lines.append(f"{indent}{entry.name}/  {size_text(folder_bytes(entry.path))}")
                if depth < LISTING_DEPTH and entry.name not in NOT_LISTED:
                    _list_folder(Path(entry.path), depth + 1, lines)
            else:
                lines.append(f"{indent}{entry.name}  {size_text(entry.stat().st_size)}")
        except OSError:  # deleted meanwhile (a checkpoint being pruned)
            continue
    if len(entries) > LISTING_ENTRIES:
        lines.append(f"{indent}... and {len(entries) - LISTING_ENTRIES} more")


def dataset_text(config: dict, notes: list[str]) -> str | None:
    """The manifest of the config's tensors folder in figures: sample count, durations, the model and
    preprocessing settings. No captions, lyrics or song file names. None when the folder is not here."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    tensors = data.get("tensors_dir")
    folder = Path(str(tensors)).expanduser() if tensors else None
    if folder is None or not folder.is_dir():
        notes.append(f"The tensors folder {folder or '(none in the config)'} is not here: no dataset summary.")
        return None
    try:
        manifest = read_manifest(folder)
    except PreprocessError as exc:
        return f"tensors folder: {folder}\n{exc}\n"
    durations = [sample.duration for sample in manifest.samples]
    frames = [sample.frames for sample in manifest.samples]
    lines = [f"tensors folder: {folder}", f"format version: {manifest.format_version}",
             f"samples: {len(durations)} (failed: {len(manifest.failed)})",
             f"total duration: {sum(durations):.1f} s"]
    if durations:
        lines.append(f"sample duration: {min(durations):.1f} to {max(durations):.1f} s, "
                     f"frames {min(frames)} to {max(frames)}")
    lines += [f"trigger tag: {manifest.trigger_tag!r} ({manifest.tag_position})",
              f"model: {json.dumps(manifest.model, sort_keys=True)}",
              f"settings: {json.dumps(manifest.settings, sort_keys=True)}"]
    return "\n".join(lines) + "\n"


def summary_text(run_dir: Path, job, members: list[str], notes: list[str]) -> str:
    """What the run is, how it stands, what the bundle holds and what it leaves out."""
    run = summarize_run(run_dir, job)
    lines = [f"Bug report of the training run {run_dir.name}, written {time.strftime('%Y-%m-%d %H:%M:%S %z')} "
             f"by acestep-trainer {acestep.__version__}.",
             f"Run folder: {run_dir}",
             f"Status: {run.status}" + (f": {run.message}" if run.message else ""),
             f"Last step: {_shown(run.step)}, epoch: {_shown(run.epoch)}, last loss: {_shown(run.final_loss)}, "
             f"adapter: {run.adapter or '-'}"]
    if job is not None:
        lines.append(f"Job {job.id}: {job.status}, exit code {job.exit_code}" + (f": {job.message}" if job.message
                                                                                 else ""))
    lines += ["", "Files: summary.txt, " + ", ".join(members) + ".",
              "Left out: weights, optimizer states, audio and images (run-folder.txt lists them with their sizes), "
              "captions, lyrics and song file names. The home folder is written ~."]
    if notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _shown(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
