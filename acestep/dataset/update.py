"""Scan a folder into an existing dataset: keep what was reviewed, add the new songs.

A dataset built once is then reviewed and edited by hand (captions, lyrics, BPM). When songs are
added to the folder, building again would throw those edits away, so `update_dataset` keeps every
existing sample exactly as it is (all its fields, edited or not), labels only the audio files the
dataset does not list yet (from their sidecars and CSVs, as `build_dataset` does) and appends them,
and lists the samples whose audio file is gone. Those are dropped only when asked: by default they
stay, so nothing is lost. The dataset's own settings (name, trigger tag, tag position, genre ratio,
seed) are kept.

Samples are matched to files by the absolute path their stored `audio` resolves to (relative to
the dataset's root), with symbolic links resolved, so a dataset saved beside its songs or away
from them (absolute paths) both match.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from acestep.audio.decode import AUDIO_EXTENSIONS
from acestep.audio.io import FileFailure
from acestep.dataset.build import Progress, label_audio_files, scan_audio_files
from acestep.dataset.languages import parse_language
from acestep.dataset.schema import Dataset, Sample
from acestep.errors import DatasetError

__all__ = ["UpdateResult", "update_dataset"]


@dataclass
class UpdateResult:
    """The updated dataset and what happened to each sample.

    `kept`: the existing samples whose audio is still there, unchanged; `added`: the samples of
    the new audio files (paths as the updated dataset stores them); `missing`: the existing
    samples whose audio file is gone, still in the dataset unless `dropped`; `elsewhere`: kept
    samples whose audio exists outside the scanned folder. `failed` and `warnings` are those of
    labelling the new files (see `BuildResult`)."""

    dataset: Dataset
    kept: list[Sample] = field(default_factory=list)
    added: list[Sample] = field(default_factory=list)
    missing: list[Sample] = field(default_factory=list)
    dropped: bool = False
    elsewhere: list[Sample] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: "5 kept, 3 added, 1 missing (left in the dataset)"."""
        line = f"{len(self.kept)} kept, {len(self.added)} added, {len(self.missing)} missing"
        if self.missing:
            line += " (removed from the dataset)" if self.dropped else " (left in the dataset)"
        return line


def update_dataset(existing: Dataset, audio_dir: str | Path, all_instrumental: bool = False,
                   language: str | None = None, drop_missing: bool = False,
                   progress: Progress | None = None) -> UpdateResult:
    """`existing` with a sample added for each audio file under `audio_dir` it does not list yet.

    Existing samples are kept as they are and in their order; the new ones follow in scan order,
    labelled as `build_dataset` labels them (`all_instrumental` and `language` apply to them
    only). Samples whose audio file no longer exists are listed in `missing` and removed only
    with `drop_missing`. When the dataset asks for genre prompts (`genre_ratio`), new samples with
    a genre are drawn (seeded by the dataset's seed) until the ratio holds again; the existing
    samples' prompt sources are not touched. `progress(done, total, path)` is called after each
    new file. The input dataset is unchanged.

    Raises DatasetError for a bad language, a missing folder, a folder without audio files, or a
    dataset with relative paths and no root folder (one never saved or loaded).
    """
    audio_dir = Path(os.path.abspath(audio_dir))
    try:
        default_language = parse_language(language or "")
    except ValueError as error:
        raise DatasetError(str(error)) from None
    files = scan_audio_files(audio_dir)
    if not files:
        raise DatasetError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in it or its sub-folders; "
                           "choose the folder the dataset's songs are in")
    in_folder = {_key(path): path for path in files}
    result = UpdateResult(existing, dropped=drop_missing)
    listed: set[str] = set()
    samples: list[Sample] = []
    for sample in existing.samples:
        path = existing.audio_path(sample)
        key = _key(path)
        listed.add(key)
        if key not in in_folder and not path.is_file():
            result.missing.append(sample)
            if drop_missing:
                continue
        else:
            result.kept.append(sample)
            if key not in in_folder:
                result.elsewhere.append(sample)
        samples.append(sample)
    new_files = [path for key, path in in_folder.items() if key not in listed]
    labelled, result.failed, result.warnings = label_audio_files(audio_dir, files, new_files, all_instrumental,
                                                                 default_language, progress)
    result.added = [replace(sample, audio=_stored_path(existing, audio_dir / sample.audio)) for sample in labelled]
    result.added = _draw_genre_prompts(existing, samples, result.added)
    result.dataset = replace(existing, samples=samples + result.added)
    if existing.samples and len(result.elsewhere) + len(result.missing) == len(existing.samples):
        result.warnings.append(f"none of the dataset's {len(existing.samples)} sample(s) is in {audio_dir}: "
                               "is it the folder the dataset was built from?")
    return result


def _key(path: Path) -> str:
    """What two paths naming the same file have in common: absolute, links resolved, case folded
    where the system ignores case."""
    return os.path.normcase(os.path.realpath(path))


def _stored_path(dataset: Dataset, path: Path) -> str:
    """`path` as `dataset` stores it: relative to its root when under it, else absolute ("/")."""
    if dataset.root is not None:
        try:
            return path.relative_to(dataset.root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _draw_genre_prompts(dataset: Dataset, kept: list[Sample], added: list[Sample]) -> list[Sample]:
    """`added`, with as many of those that have a genre prompted with it as the dataset's genre
    ratio asks for on top of the kept samples' genre prompts (none when the ratio is 0)."""
    wanted = int(dataset.genre_ratio * (len(kept) + len(added)) + 0.5)  # round half up, as the build does
    short = wanted - sum(sample.prompt_source == "genre" for sample in kept)
    eligible = [i for i, sample in enumerate(added) if sample.genre.strip()]
    if short <= 0 or not eligible:
        return added
    chosen = set(random.Random(dataset.seed).sample(eligible, min(short, len(eligible))))
    return [replace(sample, prompt_source="genre") if i in chosen else sample for i, sample in enumerate(added)]
