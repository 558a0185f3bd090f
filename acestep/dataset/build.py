"""Build a dataset from a folder of audio files and the labels found beside them.

For each audio file (recursively; hidden files and folders are skipped) the labels are merged
from three sources, later ones winning field by field, because each is more specific than the
one before: a CSV row (a table for the whole folder) < the file's `.json` captioner sidecar <
its `.txt` lyrics (written by a person). A source only sets the fields it fills; blanks never
erase a value.

A sample is instrumental when a source says so ("is_instrumental": true, lyrics
"[Instrumental]", language "instrumental") or when `all_instrumental` is set; a file without
lyrics is NOT assumed instrumental (the dataset report lists it under missing lyrics instead).
Its language is the one its labels give, else the `language` argument, else "unknown"; its
duration comes from the file's headers.

One bad file never stops the batch: an unreadable audio file, a malformed sidecar or a bad CSV
row for it becomes that file's `FileFailure`; a CSV that cannot be used at all becomes a
failure entry for the CSV, and the other files are built without it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from acestep.audio.decode import AUDIO_EXTENSIONS
from acestep.audio.io import FileFailure, probe_audio
from acestep.dataset.csv_metadata import CsvIndex, index_csv_files, read_csv_metadata
from acestep.dataset.languages import parse_language
from acestep.dataset.schema import DEFAULT_SEED, TAG_POSITIONS, Dataset, Sample, assign_prompt_sources
from acestep.dataset.sidecars import read_sidecars
from acestep.errors import AudioError, DatasetError

__all__ = ["BuildResult", "build_dataset", "label_audio_files", "read_csv_metadata", "read_sidecars",
           "scan_audio_files"]

Progress = Callable[[int, int, Path], None]


@dataclass
class BuildResult:
    """The dataset built (root = the audio folder), the files left out with the reason, and
    warnings about labels that were not applied as they were written."""

    dataset: Dataset
    failed: list[FileFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def scan_audio_files(folder: str | Path) -> list[Path]:
    """Audio files under `folder` (any depth; extensions of AUDIO_EXTENSIONS in any case), sorted
    by their path, leaving out hidden files and folders (".git", macOS "._song.mp3").

    Raises DatasetError when `folder` does not exist or is not a folder.
    """
    folder = Path(os.path.abspath(folder))
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a folder"
        raise DatasetError(f"{folder}: {problem}; choose the folder that holds the audio files")
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [Path(directory) / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def build_dataset(
    audio_dir: str | Path,
    name: str | None = None,
    trigger_tag: str = "",
    tag_position: str = "prepend",
    genre_ratio: float = 0.0,
    all_instrumental: bool = False,
    language: str | None = None,
    seed: int = DEFAULT_SEED,
    progress: Progress | None = None,
) -> BuildResult:
    """A dataset of every usable audio file under `audio_dir`, labelled from its sidecars and CSVs.

    `name` defaults to the folder's name; `language` (a code or English name) is used for
    samples whose labels give none; `genre_ratio` of the samples (seeded by `seed`) are
    prompted with their genre. `progress(done, total, path)` is called after each file.
    Raises DatasetError for bad settings, a missing folder, or a folder without audio files.
    """
    audio_dir = Path(os.path.abspath(audio_dir))
    default_language = _check_settings(tag_position, genre_ratio, language)
    files = scan_audio_files(audio_dir)
    if not files:
        raise DatasetError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in it or its sub-folders")
    samples, failed, warnings = label_audio_files(audio_dir, files, files, all_instrumental, default_language,
                                                  progress)
    dataset = Dataset(name or audio_dir.name, samples, trigger_tag.strip(), tag_position, genre_ratio, seed, audio_dir)
    result = BuildResult(dataset, failed, warnings)
    result.dataset = assign_prompt_sources(result.dataset)
    result.warnings += _genre_shortfall(result.dataset)
    return result


def label_audio_files(audio_dir: Path, files: list[Path], wanted: list[Path], all_instrumental: bool,
                      default_language: str, progress: Progress | None = None,
                      ) -> tuple[list[Sample], list[FileFailure], list[str]]:
    """Samples for the `wanted` files among `files` (every audio file under `audio_dir`, as
    `scan_audio_files` lists them), labelled from their sidecars and the folder's CSVs; the files
    left out with the reason (a broken CSV too); and warnings. Sample paths are relative to
    `audio_dir`. CSV rows naming a file of `files` that is not wanted are neither applied nor
    reported as unused. `progress(done, len(wanted), path)` is called after each wanted file."""
    relative = {path: path.relative_to(audio_dir).as_posix() for path in files}
    csv_index, broken_csvs = index_csv_files(audio_dir)
    csv_index.set_audio_files(list(relative.values()))
    samples: list[Sample] = []
    failed = [FileFailure(path, reason) for path, reason in broken_csvs]
    warnings: list[str] = []
    stems: dict[Path, Counter[str]] = {}
    for path in files:
        stems.setdefault(path.parent, Counter())[path.stem] += 1
    for done, path in enumerate(wanted, start=1):
        rel = relative[path]
        try:
            info = probe_audio(path)
            labels = csv_index.lookup(rel)
            labels.update(read_sidecars(path, stems[path.parent]))
        except AudioError as error:
            failed.append(FileFailure(path, error.reason))
        except DatasetError as error:
            failed.append(FileFailure(path, str(error)))
        else:
            sample = _sample(rel, labels, info.duration, all_instrumental, default_language)
            if all_instrumental and sample.lyrics:
                warnings.append(f"{rel}: has lyrics but is marked instrumental (all instrumental is on)")
            samples.append(sample)
        if progress is not None:
            progress(done, len(wanted), path)
    not_wanted = {relative[path] for path in files} - {relative[path] for path in wanted}
    warnings += _unused_csv_rows(csv_index, not_wanted)
    return samples, failed, warnings


def _check_settings(tag_position: str, genre_ratio: float, language: str | None) -> str:
    if tag_position not in TAG_POSITIONS:
        raise DatasetError(f"tag position must be one of {', '.join(TAG_POSITIONS)}, found {tag_position!r}")
    if isinstance(genre_ratio, bool) or not isinstance(genre_ratio, (int, float)) or not 0 <= genre_ratio <= 1:
        raise DatasetError(f"genre ratio must be a number from 0 to 1, found {genre_ratio!r}")
    try:
        return parse_language(language or "")
    except ValueError as error:
        raise DatasetError(str(error)) from None


def _sample(relative: str, labels: dict[str, Any], duration: float, all_instrumental: bool,
            default_language: str) -> Sample:
    return Sample(
        audio=relative,
        caption=labels.get("caption", ""),
        genre=labels.get("genre", ""),
        lyrics=labels.get("lyrics", ""),
        bpm=labels.get("bpm"),
        keyscale=labels.get("keyscale", ""),
        timesignature=labels.get("timesignature", ""),
        language=labels.get("language", default_language),
        instrumental=all_instrumental or labels.get("instrumental", False),
        duration=duration,
    )


def _unused_csv_rows(index: CsvIndex, not_wanted: set[str]) -> list[str]:
    """Warnings for the CSV rows no labelled file used, leaving out the rows that name a file
    that was not labelled, by its path or by a bare name such a file has."""
    skipped_names = Counter(PurePosixPath(path).name for path in not_wanted)
    warnings = []
    for row in index.unused():
        if row.path_key in not_wanted or (row.path_key not in index.audio_paths and skipped_names[row.name_key]):
            continue
        if row.error:
            warnings.append(f"{row.error} (row not applied)")
        else:
            warnings.append(f"{row.where}: names {row.path_key!r}, which is not among the audio files")
    return warnings


def _genre_shortfall(dataset: Dataset) -> list[str]:
    wanted = int(dataset.genre_ratio * len(dataset.samples) + 0.5)
    got = Counter(sample.prompt_source for sample in dataset.samples)["genre"]
    if got >= wanted:
        return []
    return [f"genre ratio {dataset.genre_ratio:g} asks for {wanted} genre-prompted samples, but only {got} "
            "have a genre; the others use their caption"]
