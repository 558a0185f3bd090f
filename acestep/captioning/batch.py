"""Label a folder of songs: each labeller in turn over every file, results merged into the files'
`.json` sidecars (what `acestep.dataset` reads) and optionally one CSV.

- One pass per labeller, and the labeller is unloaded after its pass, so the captioner and the
  transcriber never share a small GPU.
- "fill_missing" skips the inference of a model labeller for files whose sidecars already hold
  what it gives; "overwrite" replaces those fields. Signal analysis always runs.
- Results are cached (diskcache) by audio content hash + labeller fingerprint: running again over
  the same folder does no inference at all.
- Out of memory: the labeller switches to a smaller setting and the file is retried.
- A bad file, a malformed sidecar or a folder that cannot be written is a per-file failure; the
  batch goes on. A model that cannot be loaded (missing, damaged) or a missing package stops the
  batch with its message, once: every file would fail alike. Sidecars written before are kept.
  Stop requests are honoured between files.
- A field is "there" under any name the dataset builder reads for it (`tempo` for `bpm`, `key`
  for `keyscale`, ...): fill-missing leaves it, and a new value goes under the name already
  there (`acestep.captioning.sidecar_json`).
- When signal analysis ran, it checks the BPM and key the language models gave in this run (they
  hallucinate them) and replaces what it contradicts; a person's value is kept, with a note
  (`acestep.captioning.cross_check`).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from acestep.audio.analysis import file_content_hash
from acestep.audio.io import FileFailure
from acestep.captioning.cross_check import cross_check
from acestep.captioning.labels import SIDECAR_FIELDS, Labels
from acestep.captioning.sidecar_json import update_sidecar
from acestep.errors import AceStepError, CheckpointError, EnvironmentProblem
from acestep.files import write_failure

MODES = ("fill_missing", "overwrite")


class Labeller(Protocol):
    name: str

    def fingerprint(self) -> str: ...

    def label(self, path: Path) -> Labels: ...

    def reduce_memory(self) -> bool: ...

    def unload(self) -> None: ...


# What each labeller is for: when the sidecars already say it, "fill_missing" skips the labeller.
def already_labelled(labeller: str, existing: dict) -> bool:
    if labeller == "transcriber":
        return bool(existing.get("lyrics")) or existing.get("instrumental") is not None
    if labeller == "analysis":
        return existing.get("bpm") is not None and bool(existing.get("keyscale"))
    return bool(existing.get("caption"))  # captioner, lm


@dataclass
class LabelProgress:
    index: int  # 1-based position over all passes
    total: int
    labeller: str
    path: Path
    status: str  # labelled, cached, skipped, failed
    elapsed: float
    eta: float | None
    message: str = ""


@dataclass
class LabelSummary:
    files: int = 0
    labelled: int = 0  # inferences run and written
    cached: int = 0
    skipped: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cancelled: bool = False
    csv_path: Path | None = None

    def describe(self) -> str:
        stopped = " - stopped, run again to continue" if self.cancelled else ""
        lines = [f"{self.files} file(s): {self.labelled} labelled, {self.cached} from the cache, {self.skipped} "
                 f"already labelled (skipped), {len(self.failed)} failed{stopped}"]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  failed: {f.path}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


def default_cache_dir() -> Path:
    from acestep.environment import project_root

    return project_root() / "cache" / "labels"


def _cache_key(content_hash: str, labeller: Labeller) -> str:
    return hashlib.sha256(f"{content_hash}|{labeller.name}|{labeller.fingerprint()}".encode()).hexdigest()


def _label_with_retries(labeller: Labeller, path: Path, notes: list[str]) -> Labels:
    """Run one inference; after an out-of-memory error switch to a smaller setting and retry."""
    import torch

    while True:
        try:
            return labeller.label(path)
        except torch.OutOfMemoryError:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if not labeller.reduce_memory():
                raise AceStepError(f"out of GPU memory with the {labeller.name}'s smallest settings; close other GPU "
                                   "programs or use --cpu-offload") from None
            notes.append(f"{path.name}: out of memory, the {labeller.name} retried with a smaller setting")


@dataclass
class _Batch:
    """What one `label_folder` run keeps track of as it goes."""

    mode: str
    cache: object | None  # a diskcache.Cache, None without the cache
    summary: LabelSummary
    hashes: dict[Path, str] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)  # path -> reason
    analysed: dict[Path, Labels] = field(default_factory=dict)
    by_models: dict[Path, set[str]] = field(default_factory=dict)  # fields a model wrote in this run


def label_folder(folder: str | Path, labellers: Sequence[Labeller], mode: str = "fill_missing",
                 csv_path: str | Path | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
                 progress: Callable[[LabelProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> LabelSummary:
    """Label every audio file under `folder` (recursively) with each labeller in turn.

    Returns a summary; raises `AceStepError` when the folder holds no audio, the mode is unknown,
    or the CSV or the cache cannot be written where asked (checked before any labelling).
    """
    from acestep.dataset import scan_audio_files

    if mode not in MODES:
        raise AceStepError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise AceStepError(f"{folder} is not a folder.")
    files = scan_audio_files(folder)
    if not files:
        raise AceStepError(f"{folder} holds no audio file (wav, flac, ogg, mp3, opus, m4a), in sub-folders neither.")
    if csv_path is not None:
        check_csv_path(Path(csv_path))
    cache = open_cache(Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
    batch = _Batch(mode, cache, LabelSummary(files=len(files)))
    stop = should_stop or (lambda: False)
    total, done, started = len(files) * len(labellers), 0, time.monotonic()

    def report(labeller: str, path: Path, status: str, message: str = "") -> None:
        if progress is not None:
            elapsed = time.monotonic() - started
            eta = elapsed / done * (total - done) if done else None
            progress(LabelProgress(done, total, labeller, path, status, elapsed, eta, message))

    try:
        for labeller in labellers:
            for path in files:
                if stop():
                    batch.summary.cancelled = True
                    return _finish(batch, files, csv_path)
                done += 1
                if path in batch.failed:
                    continue
                status, message = _label_one(labeller, path, batch)
                if status == "failed":
                    batch.failed[path] = message
                report(labeller.name, path, status, message)
            labeller.unload()
    finally:
        if cache is not None:
            cache.close()
    return _finish(batch, files, csv_path)


def _cannot_write(error: OSError) -> str:
    return f"cannot write the sidecar ({error.strerror or error}); is the folder read-only?"


def _label_one(labeller: Labeller, path: Path, batch: _Batch) -> tuple[str, str]:
    from acestep.dataset.sidecars import read_sidecars

    summary = batch.summary
    try:
        existing = read_sidecars(path)
        # Signal analysis always runs (no model, seconds per song): it is what checks the models.
        if batch.mode == "fill_missing" and labeller.name != "analysis" and already_labelled(labeller.name, existing):
            summary.skipped += 1
            return "skipped", ""
        if path not in batch.hashes:
            batch.hashes[path] = file_content_hash(path)
        key = _cache_key(batch.hashes[path], labeller)
        cached = batch.cache.get(key) if batch.cache is not None else None
        if cached is not None:
            labels, status = Labels.from_dict(cached), "cached"
        else:
            labels, status = _label_with_retries(labeller, path, summary.notes), "labelled"
            if batch.cache is not None:
                batch.cache.set(key, labels.to_dict())
        written = update_sidecar(path, labels, labeller, overwrite=batch.mode == "overwrite")
        # Counted once written: a file whose sidecar cannot be written is failed, not labelled too.
        if status == "cached":
            summary.cached += 1
        else:
            summary.labelled += 1
        if labeller.name == "analysis":
            batch.analysed[path] = labels
        else:
            batch.by_models.setdefault(path, set()).update(written)
        return status, "" if labels.parsed else "output kept raw: it could not be parsed"
    except OSError as error:
        return "failed", _cannot_write(error)
    except (CheckpointError, EnvironmentProblem):
        raise  # the model or a package, not this file: every file would fail the same way; stop with it once
    except AceStepError as error:
        return "failed", getattr(error, "reason", None) or str(error)


def _finish(batch: _Batch, files: list[Path], csv_path: str | Path | None) -> LabelSummary:
    summary = batch.summary
    for path, analysis in batch.analysed.items():
        if path in batch.failed:
            continue  # its sidecar was not written in this run: nothing of a model's to check
        try:
            summary.notes.extend(cross_check(path, analysis, batch.by_models.get(path, set())))
        except OSError as error:
            batch.failed[path] = _cannot_write(error)
    summary.failed = [FileFailure(path, reason) for path, reason in batch.failed.items()]
    if csv_path is not None:
        summary.csv_path = write_labels_csv(Path(csv_path), [p for p in files if p not in batch.failed])
    return summary


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (to be created if missing), or None when they can.
    Creates nothing: probes the deepest part of the path that exists."""
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"{existing} cannot be written ({write_failure(error)})"
    return None


def check_csv_path(path: Path) -> None:
    """Raise AceStepError, naming the path, when the labels CSV cannot be written at `path`."""
    problem = "it is a folder" if path.is_dir() else _folder_problem(path.parent)
    if problem:
        raise AceStepError(f"cannot write the labels CSV {path}: {problem}; choose another --csv path")


def open_cache(folder: Path):
    """The labels cache (a diskcache.Cache) in `folder`, created if need be; raises AceStepError,
    naming the folder, when it cannot be used."""
    from diskcache import Cache

    problem = _folder_problem(folder)
    if problem is None:
        try:
            return Cache(str(folder))
        except (OSError, sqlite3.Error) as error:
            problem = write_failure(error)
    raise AceStepError(f"cannot use {folder} as the labels cache: {problem}; choose another folder with "
                       "--cache-dir, or run with --no-cache")


def write_labels_csv(path: Path, files: list[Path]) -> Path:
    """One CSV row per file with the sidecar labels, in the columns the dataset builder reads.
    Returns `path`; raises AceStepError, naming the path, when it cannot be written."""
    from acestep.dataset.sidecars import read_sidecars

    def cannot_write(error: OSError) -> AceStepError:
        problem = _folder_problem(path.parent) or write_failure(error)
        return AceStepError(f"cannot write the labels CSV {path}: {problem}; choose another --csv path")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise cannot_write(error) from None
    columns = ["file", *[f if f != "is_instrumental" else "instrumental" for f in SIDECAR_FIELDS]]
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            for audio in files:
                labels = read_sidecars(audio)
                row = {"file": os.path.relpath(audio, path.parent).replace(os.sep, "/")}
                row.update({k: labels[k] for k in columns if k in labels})
                writer.writerow(row)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(error) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
