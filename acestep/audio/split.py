"""Split long audio files into fixed-length parts: `split_audio_file` cuts one file into segments
(`<stem>_partNN.wav`, 30 s or 60 s in the CLI and the UI), `split_folder` every file under a folder,
keeping each file's sub-folder.

Parts are the decoded 48 kHz stereo audio, written as 24-bit WAV (`acestep.audio.io`); the originals
are only read. A file that fails becomes a `FileFailure` and the batch carries on.

`split_folder` also gives each part a `.json` sidecar with its source's song-level labels (read
through `acestep.dataset.sidecars`); the lyrics stay behind, as a part holds only some of them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from acestep.audio.decode import AUDIO_EXTENSIONS
from acestep.audio.io import SAMPLE_RATE, FileFailure, load_audio, write_wav
from acestep.errors import AceStepError, AudioError, DatasetError
from acestep.files import write_atomically

SEGMENT_CHOICES = (30, 60)  # the segment lengths the CLI and the UI offer (any positive length works)
# The labels that stay true for a part of a song; the lyrics do not (a part holds some of them).
SEGMENT_LABELS = ("caption", "genre", "bpm", "keyscale", "timesignature", "language", "instrumental")
LYRICS_NOT_COPIED = "lyrics are not copied: a segment holds part of the song"


@dataclass
class SplitResult:
    """Outcome of `split_folder`: the part files written and the input files that failed; how many
    audio files were found and how many were cut; the parts' label sidecars written, from how many
    sources, the sources whose sidecars could not be read (their parts have no labels) and those
    whose lyrics were left behind; whether a stop ended it early."""

    written: list[Path] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    out_dir: Path | None = None
    files: int = 0
    split: int = 0
    labelled: list[Path] = field(default_factory=list)
    labelled_files: int = 0
    label_failures: list[FileFailure] = field(default_factory=list)
    lyrics_left_out: list[Path] = field(default_factory=list)
    cancelled: bool = False

    def describe(self) -> str:
        """The summary the CLI prints and the UI shows: counts, then one line per problem."""
        where = f" in {self.out_dir}" if self.out_dir is not None else ""
        stopped = " - stopped, run again to continue" if self.cancelled else ""
        lines = [f"Split {self.split} of {self.files} file(s) into {len(self.written)} segment(s){where}; "
                 f"{len(self.failed)} failed{stopped}"]
        if self.labelled or self.lyrics_left_out:
            copied = (f"copied from the sidecars of {self.labelled_files} file(s) to {len(self.labelled)} segment(s)"
                      if self.labelled else "none copied")
            lines.append(f"  labels: {copied}; {LYRICS_NOT_COPIED}")
        elif not self.label_failures and self.written:
            lines.append("  labels: none copied (no file had a sidecar with labels)")
        lines += [f"  labels not copied for {f.path}: {f.reason}" for f in self.label_failures]
        lines += [f"  failed: {f.path}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


def _part_stem(path: Path, neighbours: list[Path]) -> str:
    """Stem for `path`'s parts: `song`, or `song_mp3` when another audio file in the same folder
    has the same stem (case-insensitively), so song.mp3 and song.wav never share part names."""
    clash = any(
        other != path and other.stem.casefold() == path.stem.casefold() and other.suffix.lower() in AUDIO_EXTENSIONS
        for other in neighbours
    )
    return f"{path.stem}_{path.suffix[1:].lower()}" if clash else path.stem


def _segment_bounds(frames: int, segment_frames: int, min_tail_frames: int) -> list[tuple[int, int]]:
    """(start, end) of each part: whole segments, plus the tail if it has at least min_tail_frames."""
    bounds = [(start, start + segment_frames) for start in range(0, frames - segment_frames + 1, segment_frames)]
    tail_start = bounds[-1][1] if bounds else 0
    if frames - tail_start >= max(min_tail_frames, 1):
        bounds.append((tail_start, frames))
    return bounds


def _check_split_settings(segment_seconds: float, min_tail_seconds: float) -> None:
    if segment_seconds <= 0:
        raise AceStepError(f"the segment length must be a positive number of seconds, got {segment_seconds:g}")
    if not 0 <= min_tail_seconds <= segment_seconds:
        raise AceStepError(
            f"the shortest last part must be from 0 s to the segment length ({segment_seconds:g} s), "
            f"got {min_tail_seconds:g} s"
        )


def _split(
    path: Path, out_dir: Path, stem: str, segment_seconds: float, min_tail_seconds: float, protected: set[Path]
) -> list[Path]:
    """Decode `path` and write its parts; AudioError before writing anything if a part would
    land on a path in `protected` (the batch's inputs and parts already written)."""
    audio = load_audio(path, SAMPLE_RATE)
    bounds = _segment_bounds(
        audio.shape[1], round(segment_seconds * SAMPLE_RATE), round(min_tail_seconds * SAMPLE_RATE)
    )
    if not bounds:
        raise AudioError(
            path, f"is {audio.shape[1] / SAMPLE_RATE:.1f} s long, shorter than the {min_tail_seconds:g} s minimum part"
        )
    width = max(2, len(str(len(bounds))))
    targets = [out_dir / f"{stem}_part{index:0{width}d}.wav" for index in range(1, len(bounds) + 1)]
    clashes = [target for target in targets if target.resolve() in protected]
    if clashes:
        raise AudioError(path, f"its part {clashes[0]} would overwrite an input or another file's part; rename one")
    return [write_wav(target, audio[:, start:end]) for target, (start, end) in zip(targets, bounds, strict=True)]


def split_audio_file(
    path: str | Path, out_dir: str | Path, segment_seconds: int = 30, min_tail_seconds: float = 10.0
) -> list[Path]:
    """Cut one file into `segment_seconds` parts written as `<stem>_partNN.wav` in `out_dir`.

    Parts are the decoded 48 kHz stereo audio (24-bit WAV); the original is only read. A tail
    shorter than `min_tail_seconds` is dropped; a file shorter than one segment becomes one part
    if it is at least `min_tail_seconds` long. When another audio file in the same folder has the
    same stem, the extension joins the stem (song.mp3 -> song_mp3_part01.wav). The UI offers 30
    and 60 s segments; any positive length works. Out: the written paths in order. Raises
    AudioError for a file `load_audio` rejects or one too short for any part; AceStepError for
    bad settings.
    """
    path, out_dir = Path(path), Path(out_dir)
    _check_split_settings(segment_seconds, min_tail_seconds)
    neighbours = list(path.parent.iterdir()) if path.parent.is_dir() else []
    return _split(path, out_dir, _part_stem(path, neighbours), segment_seconds, min_tail_seconds, {path.resolve()})


def _audio_files(in_dir: Path, out_dir: Path) -> list[Path]:
    """The audio files the dataset builder finds under `in_dir` (hidden files and folders, such as
    macOS "._song.mp3", left out), leaving out anything inside `out_dir`."""
    from acestep.dataset.build import scan_audio_files  # here: the audio stack loads no dataset code

    out_resolved = out_dir.resolve()
    found = [in_dir / path.relative_to(in_dir.absolute()) for path in scan_audio_files(in_dir)]  # as given
    return [path for path in found if out_resolved not in path.resolve().parents]


def _segment_labels(path: Path, stems: Counter[str]) -> tuple[dict, bool]:
    """The labels of `path`'s sidecars that hold for a part of it, and whether it had lyrics.
    Raises DatasetError (naming the sidecar) for one that cannot be read."""
    from acestep.dataset.sidecars import read_sidecars  # here: the audio stack loads no dataset code

    labels = read_sidecars(path, stems)
    return {name: labels[name] for name in SEGMENT_LABELS if name in labels}, "lyrics" in labels


def _write_segment_labels(parts: list[Path], labels: dict, source: str) -> list[Path]:
    """Each part's `.json` sidecar (`<part>.wav.json`, the name `sidecar_paths` looks up first),
    holding `labels` and the source it came from; written atomically, replacing an older one."""
    text = json.dumps({**labels, "split_from": source}, indent=2, ensure_ascii=False) + "\n"
    return [write_atomically(part.with_name(part.name + ".json"), text) for part in parts]


def _copy_labels(result: SplitResult, path: Path, parts: list[Path], stems: Counter[str], source: str) -> None:
    """Give `parts` the song-level labels of `path`'s sidecars, noting in `result` what was copied,
    left behind, or could not be read (not raised: the parts are written already)."""
    try:
        labels, had_lyrics = _segment_labels(path, stems)
    except DatasetError as error:
        result.label_failures.append(FileFailure(path, f"{error}; its segments have no labels"))
        return
    if had_lyrics:
        result.lyrics_left_out.append(path)
    if labels:
        result.labelled.extend(_write_segment_labels(parts, labels, source))
        result.labelled_files += 1


def split_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    segment_seconds: int = 30,
    min_tail_seconds: float = 10.0,
    progress: Callable[[int, int, Path], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SplitResult:
    """`split_audio_file` for every audio file under `in_dir` (recursively), keeping each file's
    sub-folder under `out_dir`, and each part's labels: a `<part>.wav.json` sidecar with the
    source's caption, genre, bpm, keyscale, timesignature, language and instrumental (when its
    sidecars give any; never its lyrics).

    A file that fails becomes a FileFailure and the batch continues; parts already written stay.
    A source sidecar that cannot be read is reported in `label_failures` and its parts are written
    without labels. Files inside `out_dir` (when it lies within `in_dir`) are not inputs.
    `progress(done, total, path)` is called after each file; `should_stop()` is asked before each
    one (the result is then `cancelled`). Raises AudioError when `in_dir` is not a folder or is
    `out_dir` itself; AceStepError for bad settings; OSError from writing (e.g. a full disk).
    """
    from acestep.dataset.sidecars import audio_stems

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    _check_split_settings(segment_seconds, min_tail_seconds)
    if not in_dir.is_dir():
        raise AudioError(in_dir, "is not a folder; choose the folder that holds the audio files")
    if in_dir.resolve() == out_dir.resolve():
        raise AudioError(out_dir, "the output folder is the input folder; choose another so originals stay untouched")
    files = _audio_files(in_dir, out_dir)
    by_folder: dict[Path, list[Path]] = {}
    for file in files:
        by_folder.setdefault(file.parent, []).append(file)
    stems = {folder: audio_stems(folder) for folder in by_folder}
    protected = {file.resolve() for file in files}
    result = SplitResult(out_dir=out_dir, files=len(files))
    for done, path in enumerate(files, start=1):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        target_dir = out_dir / path.parent.relative_to(in_dir)
        stem = _part_stem(path, by_folder[path.parent])
        try:
            parts = _split(path, target_dir, stem, segment_seconds, min_tail_seconds, protected)
        except AudioError as error:
            result.failed.append(FileFailure(path, error.reason))
        else:
            result.split += 1
            result.written.extend(parts)
            protected.update(part.resolve() for part in parts)
            _copy_labels(result, path, parts, stems[path.parent], path.relative_to(in_dir).as_posix())
        if progress is not None:
            progress(done, len(files), path)
    return result
