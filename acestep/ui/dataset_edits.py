"""What the Dataset tab does to a dataset, as plain functions: scan a folder of audio into a new
dataset, open a dataset JSON, scan a folder's new songs into the open dataset, show its samples
as table rows and one sample's values, edit a sample, remove it, change the dataset's settings,
edit a tag across many samples, report on it and save it.

The open dataset is an `OpenDataset`: the dataset, the file it came from and that file's revision,
so that a save over a file someone else saved meanwhile is refused (see
`acestep.dataset.save_dataset`). The functions take plain values and return new objects, so tests
call them without a browser; `acestep.ui.dataset_tab` wires them to Gradio. This module does not
import gradio, nor torch: reading audio headers and levels is numpy and soundfile.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from acestep.dataset import (
    PROMPT_SOURCES,
    TAG_POSITIONS,
    Dataset,
    assign_prompt_sources,
    build_dataset,
    dataset_report,
    format_report,
    load_dataset_revision,
    parse_language,
    save_dataset_revision,
    update_dataset,
)
from acestep.dataset import tags as dataset_tags
from acestep.dataset.values import normalize_keyscale, normalize_timesignature, parse_bpm
from acestep.errors import DatasetError
from acestep.ui.context import PathRefused, Workspace

Progress = Callable[[int, int, Path], None]


@dataclass(frozen=True)
class OpenDataset:
    """The dataset a browser has open. `path` is the JSON it was loaded from or last saved to and
    `revision` that file's revision then (both None for a scan not saved yet); `unsaved` says
    whether it was changed since."""

    dataset: Dataset
    path: Path | None = None
    revision: str | None = None
    unsaved: bool = False


# --- opening ---------------------------------------------------------------------------------


def dataset_files(workspace: Workspace) -> list[Path]:
    """Every dataset JSON under the workspace's datasets/ folder, as Save writes them: any case of
    .json ("x.JSON"), in sub-folders too ("sub/x.json"); hidden folders are left out. Sorted by
    their path under datasets/; [] without the folder."""
    root = workspace.datasets
    found = []
    for folder, subfolders, files in os.walk(root):  # nothing (no error) when root is missing
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder) / name for name in files if name.lower().endswith(".json")]
    return sorted((path for path in found if path.is_file()), key=lambda path: path.relative_to(root).parts)


def dataset_choices(workspace: Workspace) -> list[str]:
    """The dataset JSONs under the workspace's datasets/ folder (`dataset_files`), as paths
    relative to the workspace."""
    return [workspace.relative(path) for path in dataset_files(workspace)]


def scan_folder(workspace: Workspace, folder: str, name: str = "", trigger_tag: str = "",
                tag_position: str = "prepend", genre_ratio: float = 0.0, all_instrumental: bool = False,
                language: str = "", progress: Progress | None = None) -> tuple[OpenDataset, str]:
    """A new dataset of the audio under `folder` (see `acestep.dataset.build_dataset`) and a Markdown
    summary naming the files left out and the warnings. Raises PathRefused for a folder outside
    the workspace roots, DatasetError for bad settings or a folder without audio."""
    audio_dir = workspace.check_path(folder, must_exist=True, what="audio folder")
    result = build_dataset(audio_dir, name=name.strip() or None, trigger_tag=trigger_tag, tag_position=tag_position,
                           genre_ratio=float(genre_ratio or 0.0), all_instrumental=bool(all_instrumental),
                           language=language or None, progress=progress)
    lines = [f"Found **{len(result.dataset.samples)}** sample(s) in `{workspace.relative(audio_dir)}`. "
             "Not saved yet."]
    return OpenDataset(result.dataset, unsaved=True), "\n".join(lines + _problems(result.failed, result.warnings))


def scan_into_open(workspace: Workspace, opened: OpenDataset | None, folder: str, all_instrumental: bool = False,
                   language: str = "", drop_missing: bool = False,
                   progress: Progress | None = None) -> tuple[OpenDataset, str]:
    """The open dataset with the new audio files under `folder` added (see
    `acestep.dataset.update_dataset`: every sample it holds, unsaved edits included, is kept as it
    is, and so are its settings), and a Markdown summary: kept, added, missing (listed; removed
    only with `drop_missing`), files left out, warnings. The result keeps the file and revision it
    was opened from, so Save writes it back only if nobody saved that file meanwhile. Raises
    DatasetError with no dataset open, PathRefused for a folder outside the workspace roots."""
    opened = require_open(opened)
    audio_dir = workspace.check_path(folder, must_exist=True, what="audio folder")
    result = update_dataset(opened.dataset, audio_dir, all_instrumental=bool(all_instrumental),
                            language=language or None, drop_missing=bool(drop_missing), progress=progress)
    lines = [f"Scanned `{workspace.relative(audio_dir)}` into **{opened.dataset.name}**: {result.summary()}. "
             "Not saved yet."]
    if result.missing:
        what = "Removed" if result.dropped else "Kept, but their audio is gone (tick Drop to remove them)"
        lines.append(f"**{what} ({len(result.missing)}):**")
        lines += [f"- `{sample.audio}`" for sample in result.missing]
    if result.elsewhere:
        lines.append(f"**Kept, audio outside that folder ({len(result.elsewhere)}):**")
        lines += [f"- `{sample.audio}`" for sample in result.elsewhere]
    lines += _problems(result.failed, result.warnings)
    return replace(opened, dataset=result.dataset, unsaved=True), "\n".join(lines)


def _problems(failed: list, warnings: list[str]) -> list[str]:
    """Markdown lines listing the files a scan left out and its warnings."""
    lines = []
    if failed:
        lines.append(f"**Left out ({len(failed)}):**")
        lines += [f"- `{failure.path.name}`: {failure.reason}" for failure in failed]
    if warnings:
        lines.append("**Warnings:**")
        lines += [f"- {warning}" for warning in warnings]
    return lines


def open_dataset(workspace: Workspace, path: str) -> OpenDataset:
    """The dataset JSON at `path` with its revision. Raises PathRefused or DatasetError."""
    source = workspace.check_path(path, must_exist=True, what="dataset file")
    dataset, revision = load_dataset_revision(source)
    return OpenDataset(dataset, source, revision)


def status_text(workspace: Workspace, opened: OpenDataset | None) -> str:
    """One line on what is open: name, file, sample count, unsaved changes."""
    if opened is None:
        return "No dataset open: scan a folder or load a dataset JSON."
    where = f"`{workspace.relative(opened.path)}`" if opened.path else "not saved yet"
    changes = " — **unsaved changes**" if opened.unsaved else ""
    common = audio_folder(opened.dataset)
    audio = f", audio in `{common}`" if common is not None else ""
    return f"**{opened.dataset.name}** ({where}), {len(opened.dataset.samples)} sample(s){audio}{changes}"


def songs_folder(workspace: Workspace, opened: OpenDataset) -> str:
    """The folder all the open dataset's songs lie under (for the audio folder box, so that a scan
    into the dataset looks where its songs are), relative to the workspace; "" with no samples."""
    dataset = opened.dataset
    if not dataset.samples:
        return ""
    try:
        common = os.path.commonpath([str(dataset.audio_path(sample).parent) for sample in dataset.samples])
    except (DatasetError, ValueError):  # no root; or, on Windows, songs on different drives
        return ""
    return workspace.relative(Path(common))


def default_save_path(workspace: Workspace, opened: OpenDataset | None) -> str:
    """Where Save writes by default: the file it came from, else datasets/<name>.json."""
    if opened is None:
        return ""
    if opened.path is not None:
        return workspace.relative(opened.path)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in opened.dataset.name.strip()) or "dataset"
    return workspace.relative(workspace.datasets / f"{stem}.json")


# --- looking at samples ----------------------------------------------------------------------


def audio_folder(dataset: Dataset) -> Path | None:
    """The folder all the samples' audio lies in when the dataset lists absolute paths (as it does
    when saved away from its songs), else None: the paths are already relative and short."""
    paths = [Path(sample.audio) for sample in dataset.samples]
    if not paths or not all(path.is_absolute() for path in paths):
        return None
    try:
        return Path(os.path.commonpath([str(path.parent) for path in paths]))
    except ValueError:  # on Windows, paths on different drives share no folder
        return None


def sample_rows(dataset: Dataset) -> list[list]:
    """One table row per sample, numbered from 1 as the bulk tag edit's sample list is. Absolute
    audio paths are shown relative to the folder they share (see `audio_folder`)."""
    common = audio_folder(dataset)
    rows = []
    for number, s in enumerate(dataset.samples, start=1):
        lyrics = " / ".join(line.strip() for line in s.lyrics.splitlines() if line.strip())
        audio = Path(s.audio).relative_to(common).as_posix() if common is not None else s.audio
        rows.append([number, audio, s.caption, s.genre, lyrics[:60] + ("…" if len(lyrics) > 60 else ""),
                     "" if s.bpm is None else f"{s.bpm:g}", s.keyscale, s.timesignature, s.language,
                     "yes" if s.instrumental else "", "" if s.duration is None else f"{s.duration:.1f}",
                     s.prompt_source])
    return rows


def sample_view(workspace: Workspace, opened: OpenDataset, index: int) -> tuple[str | None, str, tuple]:
    """For the sample at `index`: the audio file to play (None when it is missing or outside the
    workspace roots, which the app may not serve), a note, and the editor's values (caption,
    genre, lyrics, bpm, key, time signature, language, instrumental, prompt source)."""
    sample = sample_at(opened, index)
    path = opened.dataset.audio_path(sample)
    note = f"Sample {index + 1}: `{sample.audio}`"
    try:
        audio: str | None = str(workspace.check_path(path, must_exist=True, what="audio file"))
    except PathRefused as refused:
        audio, note = None, f"{note} (cannot play it: {refused})"
    values = (sample.caption, sample.genre, sample.lyrics, sample.bpm, sample.keyscale, sample.timesignature,
              sample.language, sample.instrumental, sample.prompt_source)
    return audio, note, values


def apply_sample_edit(opened: OpenDataset, index: int, caption: str, genre: str, lyrics: str,
                      bpm: float | str | None, keyscale: str, timesignature: str, language: str,
                      instrumental: bool, prompt_source: str | None = None) -> OpenDataset:
    """A copy of `opened` with the sample at `index` relabelled. The key and time signature are
    normalised ("Am" -> "A minor", "4/4" -> "4"); `prompt_source` (one of PROMPT_SOURCES: train on
    the caption or on the genre) is kept when None. Raises DatasetError naming the sample and field."""
    sample = sample_at(opened, index)
    source = sample.prompt_source if prompt_source is None else prompt_source
    try:
        if source not in PROMPT_SOURCES:
            raise ValueError(f"prompt source must be one of {', '.join(PROMPT_SOURCES)}, found {source!r}")
        edited = replace(sample, caption=caption.strip(), genre=genre.strip(), lyrics=(lyrics or "").strip(),
                         bpm=parse_bpm(bpm), keyscale=normalize_keyscale(keyscale or ""),
                         timesignature=normalize_timesignature(timesignature or ""),
                         language=parse_language(language or ""), instrumental=bool(instrumental),
                         prompt_source=source)
    except ValueError as error:
        raise DatasetError(f"sample {index + 1} ({sample.audio}): {error}") from None
    samples = list(opened.dataset.samples)
    samples[index] = edited
    return replace(opened, dataset=replace(opened.dataset, samples=samples), unsaved=True)


def remove_sample(opened: OpenDataset, index: int) -> OpenDataset:
    """A copy of `opened` without the sample at `index` (its audio file is not touched); the
    samples after it move up one number. Saved only when the dataset is saved. Raises
    DatasetError with no dataset open or no such sample."""
    sample_at(opened, index)
    samples = list(opened.dataset.samples)
    del samples[int(index)]
    return replace(opened, dataset=replace(opened.dataset, samples=samples), unsaved=True)


def apply_settings(opened: OpenDataset, name: str, trigger_tag: str, tag_position: str,
                   genre_ratio: float) -> OpenDataset:
    """A copy with a new name, trigger tag, tag position and genre ratio (the genre-prompted
    samples are drawn again). Raises DatasetError for a bad position or ratio."""
    if tag_position not in TAG_POSITIONS:
        raise DatasetError(f"tag position must be one of {', '.join(TAG_POSITIONS)}, found {tag_position!r}")
    dataset = replace(opened.dataset, name=name.strip() or opened.dataset.name, trigger_tag=trigger_tag.strip(),
                      tag_position=tag_position)
    return replace(opened, dataset=assign_prompt_sources(dataset, float(genre_ratio or 0.0)), unsaved=True)


# --- bulk tag edit ---------------------------------------------------------------------------


def edit_tags(opened: OpenDataset, action: str, tag: str, where: str = "caption",
              selection: str = "") -> tuple[OpenDataset, str]:
    """`acestep.dataset.tags.edit_tags` on the open dataset: the copy and the message."""
    result = dataset_tags.edit_tags(opened.dataset, action, tag, where, selection)
    if not result.changed:
        return opened, result.message
    return replace(opened, dataset=result.dataset, unsaved=True), result.message


# --- report and save -------------------------------------------------------------------------


def report_markdown(opened: OpenDataset, analyse_audio: bool = True, progress: Progress | None = None) -> str:
    """The dataset report (`acestep.dataset.format_report`) as a Markdown code block."""
    report = dataset_report(opened.dataset, analyse_audio=analyse_audio, progress=progress)
    verdict = "No unreadable, silent, clipped or duplicate files." if report.ok else "**Problems found.**"
    return f"{verdict}\n\n```\n{format_report(report)}\n```"


def save_open_dataset(workspace: Workspace, opened: OpenDataset, target: str,
                      overwrite: bool = False) -> tuple[OpenDataset, str]:
    """Save to `target` (a .json inside the workspace roots); the saved state and a message.

    Saving back to the file the dataset came from is refused when someone else saved that file
    since (DatasetError: reload). Saving to another file that exists needs `overwrite`."""
    path = workspace.check_path(target, what="dataset file")
    if path.suffix.lower() != ".json":
        raise DatasetError(f"{path}: a dataset file name ends in .json")
    if path == opened.path:
        expected = opened.revision
    elif path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists: tick Overwrite to replace it, or choose another name.")
    else:
        expected = None
    saved, revision = save_dataset_revision(opened.dataset, path, expected_revision=expected)
    message = f"Saved {len(opened.dataset.samples)} sample(s) to `{workspace.relative(saved)}`."
    return OpenDataset(opened.dataset, saved, revision), message


def sample_at(opened: OpenDataset | None, index: int | None):
    if opened is None:
        raise DatasetError("No dataset open: scan a folder or load a dataset JSON first.")
    if index is None or not 0 <= int(index) < len(opened.dataset.samples):
        raise DatasetError("Pick a sample in the table first.")
    return opened.dataset.samples[int(index)]


def require_open(opened: OpenDataset | None) -> OpenDataset:
    if opened is None:
        raise DatasetError("No dataset open: scan a folder or load a dataset JSON first.")
    return opened
