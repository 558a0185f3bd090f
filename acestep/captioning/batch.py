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
- When signal analysis ran, it cross-checks the BPM and key the language models gave (they
  hallucinate them): a BPM off by more than 4 % (and not a clean double or half) or a key that is
  neither the analysed one nor its relative is replaced, with a note.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from acestep.audio.analysis import file_content_hash
from acestep.audio.io import FileFailure
from acestep.captioning.labels import SIDECAR_FIELDS, Labels
from acestep.errors import AceStepError, CheckpointError, EnvironmentProblem
from acestep.files import write_atomically

MODES = ("fill_missing", "overwrite")
BPM_TOLERANCE = 0.04


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
    labelled: int = 0  # inferences run
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


def sidecar_path(audio: Path) -> Path:
    """The `.json` sidecar to update: an existing one the dataset reads for this file, else `<file>.json`."""
    from acestep.dataset.sidecars import sidecar_paths

    return sidecar_paths(audio).get(".json", audio.with_name(audio.name + ".json"))


def _write_json_atomic(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def update_sidecar(audio: Path, labels: Labels, labeller: Labeller, overwrite: bool) -> dict:
    """Merge one labeller's labels into the file's `.json` sidecar (other keys kept) and return
    the sidecar's content. Raises OSError when the folder cannot be written."""
    path = sidecar_path(audio)
    data = json.loads(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}
    for key, value in labels.sidecar().items():
        if overwrite or data.get(key) in (None, "", []):
            data[key] = value
    data.setdefault("labelled_by", {})[labeller.name] = labeller.fingerprint()
    if labels.raw:
        data.setdefault("raw_outputs", {})[labeller.name] = labels.raw
    if not labels.parsed:
        data.setdefault("unparsed", []).append(labeller.name)
    _write_json_atomic(path, data)
    return data


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


def label_folder(folder: str | Path, labellers: Sequence[Labeller], mode: str = "fill_missing",
                 csv_path: str | Path | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
                 progress: Callable[[LabelProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> LabelSummary:
    """Label every audio file under `folder` (recursively) with each labeller in turn.

    Returns a summary; raises `AceStepError` when the folder holds no audio or the mode is unknown.
    """
    from diskcache import Cache

    from acestep.dataset import scan_audio_files

    if mode not in MODES:
        raise AceStepError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise AceStepError(f"{folder} is not a folder.")
    files = scan_audio_files(folder)
    if not files:
        raise AceStepError(f"{folder} holds no audio file (wav, flac, ogg, mp3, opus, m4a), in sub-folders neither.")
    summary = LabelSummary(files=len(files))
    stop = should_stop or (lambda: False)
    cache = Cache(str(cache_dir or default_cache_dir())) if use_cache else None
    hashes: dict[Path, str] = {}
    failed: dict[Path, str] = {}
    analysed: dict[Path, Labels] = {}
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
                    summary.cancelled = True
                    return _finish(summary, files, failed, csv_path, analysed)
                done += 1
                if path in failed:
                    continue
                status, message = _label_one(labeller, path, mode, cache, hashes, summary, analysed)
                if status == "failed":
                    failed[path] = message
                report(labeller.name, path, status, message)
            labeller.unload()
    finally:
        if cache is not None:
            cache.close()
    return _finish(summary, files, failed, csv_path, analysed)


def _label_one(labeller: Labeller, path: Path, mode: str, cache, hashes: dict, summary: LabelSummary,
               analysed: dict) -> tuple[str, str]:
    from acestep.dataset.sidecars import read_sidecars

    try:
        existing = read_sidecars(path)
        # Signal analysis always runs (no model, seconds per song): it is what checks the models.
        if mode == "fill_missing" and labeller.name != "analysis" and already_labelled(labeller.name, existing):
            summary.skipped += 1
            return "skipped", ""
        if path not in hashes:
            hashes[path] = file_content_hash(path)
        key = _cache_key(hashes[path], labeller)
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            labels, status = Labels.from_dict(cached), "cached"
            summary.cached += 1
        else:
            labels, status = _label_with_retries(labeller, path, summary.notes), "labelled"
            summary.labelled += 1
            if cache is not None:
                cache.set(key, labels.to_dict())
        if labeller.name == "analysis":
            analysed[path] = labels
        update_sidecar(path, labels, labeller, overwrite=mode == "overwrite")
        return status, "" if labels.parsed else "output kept raw: it could not be parsed"
    except OSError as error:
        return "failed", f"cannot write the sidecar ({error.strerror or error}); is the folder read-only?"
    except (CheckpointError, EnvironmentProblem):
        raise  # the model or a package, not this file: every file would fail the same way; stop with it once
    except AceStepError as error:
        return "failed", getattr(error, "reason", None) or str(error)


def _finish(summary: LabelSummary, files: list[Path], failed: dict[Path, str], csv_path, analysed) -> LabelSummary:
    summary.failed = [FileFailure(path, reason) for path, reason in failed.items()]
    for path, analysis in analysed.items():
        note = cross_check(path, analysis)
        if note:
            summary.notes.append(note)
    if csv_path is not None:
        summary.csv_path = write_labels_csv(Path(csv_path), [p for p in files if p not in failed])
    return summary


NOTES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}


def pitch_class_key(text: str) -> tuple[int, str] | None:
    """"Bb major" / "A#" / "Am" -> (pitch class, "major" | "minor"); None when it is not a key."""
    from acestep.dataset.values import normalize_keyscale

    parts = normalize_keyscale(text).split()
    if len(parts) != 2 or parts[1] not in ("major", "minor"):
        return None
    tonic = FLATS.get(parts[0], parts[0])
    return (NOTES.index(tonic), parts[1]) if tonic in NOTES else None


def keys_agree(found: str, analysed: str) -> bool:
    """The same key, an enharmonic spelling of it, or its relative major/minor."""
    a, b = pitch_class_key(found), pitch_class_key(analysed)
    if a is None or b is None:
        return False
    if a == b:
        return True
    major, minor = (a, b) if a[1] == "major" else (b, a)
    return major[1] == "major" and minor[1] == "minor" and (major[0] + 9) % 12 == minor[0]


def _bpm_agrees(found: float, analysed: float) -> bool:
    return any(abs(found - analysed * factor) <= BPM_TOLERANCE * analysed * factor for factor in (1.0, 2.0, 0.5))


def cross_check(audio: Path, analysis: Labels) -> str:
    """Replace a sidecar BPM or key that the analysis contradicts; return a note ("" if none)."""
    path = sidecar_path(audio)
    if not path.is_file():
        return ""
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    changed = []
    bpm = data.get("bpm")
    if analysis.bpm and isinstance(bpm, (int, float)) and not _bpm_agrees(float(bpm), analysis.bpm):
        changed.append(f"bpm {bpm} -> {analysis.bpm:g}")
        data["bpm"] = analysis.bpm
    key = data.get("keyscale")
    if analysis.keyscale and isinstance(key, str) and key and not keys_agree(key, analysis.keyscale):
        changed.append(f"key {key} -> {analysis.keyscale}")
        data["keyscale"] = analysis.keyscale
    if not changed:
        return ""
    data.setdefault("label_notes", []).append("corrected by signal analysis: " + ", ".join(changed))
    _write_json_atomic(path, data)
    return f"{audio.name}: {', '.join(changed)} (signal analysis contradicted the model)"


def write_labels_csv(path: Path, files: list[Path]) -> Path:
    """One CSV row per file with the sidecar labels, in the columns the dataset builder reads."""
    from acestep.dataset.sidecars import read_sidecars

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
