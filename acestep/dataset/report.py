"""What is in a dataset and what is wrong with it, before hours of preprocessing and training.

Counts and durations, the sample rates and channel layouts present, clipped and silent files,
byte-identical duplicates (by content hash), unreadable files (truncated ones too, when the audio
is decoded), and labels that are missing: no caption and no genre; no lyrics on a track not marked
instrumental; no BPM; no key. `dataset_report` returns data (the UI shows `to_dict()`);
`folder_report` does the same for an audio folder, listing the files its build left out;
`format_report` prints a report for the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from acestep.audio.analysis import audio_stats, file_content_hash
from acestep.audio.io import FileFailure, load_audio, probe_audio
from acestep.dataset.build import build_dataset
from acestep.dataset.schema import Dataset, Sample
from acestep.errors import AudioError, DatasetError

CLIPPED_FRACTION = 0.001  # more than 0.1 % of samples at full scale: audibly clipped
MISSING_LABELS = ("caption", "lyrics", "bpm", "key")


@dataclass
class FileReport:
    """One readable file: its header figures and, when analysed, its levels and content hash.

    duration is the decoded length when the audio was analysed, else the headers' (for an MP3
    without a Xing/Info frame only an estimate). peak_dbfs is -inf for digital silence; level
    fields are None when audio was not analysed.
    """

    audio: str
    duration: float
    sample_rate: int
    channels: int
    peak_dbfs: float | None = None
    loudness_lufs: float | None = None
    clipped_fraction: float | None = None
    silent: bool | None = None
    content_hash: str | None = None


@dataclass
class DatasetReport:
    """The dataset report. Lists name samples by their `audio` path as written in the dataset."""

    name: str
    count: int
    total_duration: float
    analysed: bool
    files: list[FileReport] = field(default_factory=list)
    sample_rates: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    clipped: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=lambda: {label: [] for label in MISSING_LABELS})
    instrumental_with_lyrics: list[str] = field(default_factory=list)
    unreadable: list[FileFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No unreadable, silent, clipped or duplicate file (missing labels are not errors)."""
        return not (self.unreadable or self.silent or self.clipped or self.duplicates)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: paths as text, -inf levels as null."""
        data = asdict(self)
        data["unreadable"] = [{"audio": str(f.path), "reason": f.reason} for f in self.unreadable]
        for entry in data["files"]:
            for key in ("peak_dbfs", "loudness_lufs"):
                if entry[key] is not None and not math.isfinite(entry[key]):
                    entry[key] = None
        data["ok"] = self.ok
        return data


def dataset_report(
    dataset: Dataset,
    analyse_audio: bool = True,
    progress: Callable[[int, int, Path], None] | None = None,
    left_out: Iterable[FileFailure] = (),
) -> DatasetReport:
    """Check every sample of `dataset` (see the module docstring).

    Headers are always read; with `analyse_audio` each file is also decoded at its own sample
    rate (for its length, peak, loudness, clipping, silence) and hashed (for duplicates). A file
    that cannot be read, or that decodes short of its headers (truncated), is listed in
    `unreadable` and the report goes on. `left_out`: files already found unusable (the failures
    of the build that made `dataset`), listed first in `unreadable`. `progress(done, total, path)`
    is called after each sample.
    """
    report = DatasetReport(dataset.name, len(dataset.samples), 0.0, analyse_audio, unreadable=list(left_out))
    by_hash: dict[str, list[str]] = {}
    for done, sample in enumerate(dataset.samples, start=1):
        _check_labels(sample, report)
        path = Path(sample.audio)
        try:
            path = dataset.audio_path(sample)
            file_report = _file_report(sample.audio, path, analyse_audio)
        except AudioError as error:
            report.unreadable.append(FileFailure(path, error.reason))
        except DatasetError as error:  # a relative path in a dataset without a root
            report.unreadable.append(FileFailure(path, str(error)))
        else:
            _add(report, file_report)
            if file_report.content_hash is not None:
                by_hash.setdefault(file_report.content_hash, []).append(sample.audio)
        if progress is not None:
            progress(done, len(dataset.samples), path)
    report.duplicates = [group for group in by_hash.values() if len(group) > 1]
    return report


def folder_report(
    folder: str | Path,
    analyse_audio: bool = True,
    progress: Callable[[int, int, Path], None] | None = None,
) -> DatasetReport:
    """The report of the dataset `build_dataset` makes of the audio under `folder` (with its
    sidecars and CSVs), the files the build left out (unreadable audio, unusable sidecars or
    CSVs) first in `unreadable`. Raises DatasetError as `build_dataset` does (a missing folder,
    one without audio files)."""
    result = build_dataset(folder)
    return dataset_report(result.dataset, analyse_audio, progress, left_out=result.failed)


def _file_report(audio: str, path: Path, analyse: bool) -> FileReport:
    info = probe_audio(path)
    report = FileReport(audio, info.duration, info.sample_rate, info.channels)
    if analyse:
        # At the file's own rate: resampling would move peaks and hide or invent clipping.
        samples = load_audio(path, sample_rate=info.sample_rate, reject_silent=False)
        report.duration = samples.shape[1] / info.sample_rate  # an MP3 header may be an estimate
        stats = audio_stats(samples, info.sample_rate)
        report.peak_dbfs = stats.peak_dbfs
        report.loudness_lufs = stats.loudness_lufs
        report.clipped_fraction = stats.clipped_fraction
        report.silent = stats.silent
        report.content_hash = file_content_hash(path)
    return report


def _add(report: DatasetReport, file_report: FileReport) -> None:
    report.files.append(file_report)
    report.total_duration += file_report.duration
    report.sample_rates[file_report.sample_rate] = report.sample_rates.get(file_report.sample_rate, 0) + 1
    report.channels[file_report.channels] = report.channels.get(file_report.channels, 0) + 1
    if file_report.clipped_fraction is not None and file_report.clipped_fraction > CLIPPED_FRACTION:
        report.clipped.append(file_report.audio)
    if file_report.silent:
        report.silent.append(file_report.audio)


def _check_labels(sample: Sample, report: DatasetReport) -> None:
    lyrics = sample.lyrics.strip()
    if not sample.caption.strip() and not sample.genre.strip():
        report.missing["caption"].append(sample.audio)
    if not sample.instrumental and not lyrics:
        report.missing["lyrics"].append(sample.audio)
    if sample.bpm is None:
        report.missing["bpm"].append(sample.audio)
    if not sample.keyscale.strip():
        report.missing["key"].append(sample.audio)
    if sample.instrumental and lyrics:
        report.instrumental_with_lyrics.append(sample.audio)


# --- text for the CLI ------------------------------------------------------------------------

_MISSING_TITLES = {
    "caption": "no caption and no genre",
    "lyrics": "no lyrics and not marked instrumental",
    "bpm": "no BPM",
    "key": "no key",
}


def format_report(report: DatasetReport) -> str:
    """The report as text: summary first, then each problem with the files it concerns, then
    one line per file."""
    lines = [f"Dataset {report.name!r}: {report.count} sample{'s' if report.count != 1 else ''}, "
             f"{_duration(report.total_duration)} of audio in {len(report.files)} readable file(s)"]
    rates = ", ".join(f"{rate} Hz × {n}" for rate, n in sorted(report.sample_rates.items()))
    layouts = ", ".join(f"{_channels(c)} × {n}" for c, n in sorted(report.channels.items()))
    lines += [f"Sample rates: {rates or '-'}", f"Channels: {layouts or '-'}"]
    if not report.analysed:
        lines.append("Levels, clipping, silence and duplicates: not analysed")
    sections = [
        (f"Unreadable ({len(report.unreadable)})", [f"{f.path}: {f.reason}" for f in report.unreadable]),
        (f"Silent ({len(report.silent)})", report.silent),
        (f"Clipped, over {CLIPPED_FRACTION:.1%} of samples at full scale ({len(report.clipped)})",
         [f"{f.audio}: {f.clipped_fraction:.2%}" for f in report.files if f.audio in report.clipped]),
        (f"Duplicates ({len(report.duplicates)} group(s) of identical files)",
         [" = ".join(group) for group in report.duplicates]),
        *[(f"Missing labels: {_MISSING_TITLES[k]} ({len(v)})", v) for k, v in report.missing.items()],
        (f"Marked instrumental but has lyrics ({len(report.instrumental_with_lyrics)})",
         report.instrumental_with_lyrics),
    ]
    for title, entries in sections:
        if entries:
            lines += ["", title + ":", *(f"  {entry}" for entry in entries)]
    if report.ok:
        lines += ["", "No unreadable, silent, clipped or duplicate files."]
    lines += ["", "Files:"]
    width = max((len(f.audio) for f in report.files), default=0)  # the columns line up
    for f in report.files:
        levels = "" if f.peak_dbfs is None else f"  peak {f.peak_dbfs:6.1f} dBFS  {f.loudness_lufs:6.1f} LUFS"
        lines.append(f"  {f.audio:<{width}}  {_duration(f.duration):>7}  {f.sample_rate} Hz  "
                     f"{_channels(f.channels):<6}{levels}".rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _channels(count: int) -> str:
    return {1: "mono", 2: "stereo"}.get(count, f"{count} channels")

