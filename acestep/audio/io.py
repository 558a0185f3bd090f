"""Audio in and out: decode any supported file to 48 kHz stereo float32, normalise loudness, write
WAV atomically, and split long files into fixed-length parts.

Arrays are channels-first, `[channels, samples]`, float32 in [-1, 1]. Every problem with one file
raises `AudioError(path, reason)` whose reason a user can act on, so batch jobs list failures per
file and carry on (`split_folder` does exactly that).

Decoding (`acestep.audio.decode`): libsndfile reads wav, flac, ogg, mp3 and opus; ffmpeg reads
m4a and whatever libsndfile refuses. Resampling is soxr's "HQ" quality for every format.

`split_folder` also gives each part a `.json` sidecar with its source's song-level labels (read
through `acestep.dataset.sidecars`); the lyrics stay behind, as a part holds only some of them.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from acestep.audio.analysis import SILENCE_DBFS, integrated_loudness
from acestep.audio.decode import AUDIO_EXTENSIONS, check_file, decode_samples, read_header
from acestep.errors import AceStepError, AudioError, DatasetError
from acestep.files import write_atomically

SAMPLE_RATE = 48_000
NORMALIZATION_MODES = ("none", "peak", "lufs", "peak_lufs")

PEAK_TARGET_DBFS = -1.0
LUFS_TARGET = -14.0
MIN_SECONDS = 0.1  # shorter than this is a glitch or a broken export, not something to train on
WAV_SUBTYPE = "PCM_24"

SEGMENT_CHOICES = (30, 60)  # the segment lengths the CLI and the UI offer (any positive length works)
# The labels that stay true for a part of a song; the lyrics do not (a part holds some of them).
SEGMENT_LABELS = ("caption", "genre", "bpm", "keyscale", "timesignature", "language", "instrumental")
LYRICS_NOT_COPIED = "lyrics are not copied: a segment holds part of the song"

_RESAMPLE_MARGIN_SECONDS = 0.1  # decode this much past max_seconds so the cut is not a resampler edge


class LoudnessError(AceStepError, ValueError):
    """Audio that cannot be normalised (silent, or no measurable loudness). An AceStepError, so
    batch jobs record it against the file and carry on; a ValueError, as the arguments are at fault."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's headers say, without decoding it: duration in seconds, its own sample rate,
    channel count and frames (at that sample rate)."""

    path: Path
    duration: float
    sample_rate: int
    channels: int
    frames: int


@dataclass(frozen=True)
class FileFailure:
    """One file a batch could not use, and why (the AudioError's reason)."""

    path: Path
    reason: str


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


def _to_stereo(samples: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames, 2]: mono doubled, more than two channels cut to the first two."""
    if samples.shape[1] == 1:
        return np.repeat(samples, 2, axis=1)
    return samples[:, :2]


def _peak_dbfs(samples: np.ndarray) -> float:
    peak = float(np.max(np.abs(samples)))
    return 20.0 * math.log10(peak) if peak > 0.0 else float("-inf")


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    reject_silent: bool = True,
) -> np.ndarray:
    """Decode an audio file to float32 [2, samples] in [-1, 1] at `sample_rate`.

    Mono is copied to both channels; of more channels the first two are kept; integer PCM is
    scaled to [-1, 1); resampling is soxr HQ; values are clipped to [-1, 1]; with `max_seconds`
    only the start of the file is decoded and the result holds round(max_seconds * sample_rate)
    samples at most. Raises AudioError (with a reason for the user) for a missing, empty,
    unreadable, corrupt, text, zero-length or too short (< 0.1 s) file, an unsupported extension,
    ffmpeg missing where needed, and, with `reject_silent`, a peak below -60 dBFS. Raises
    ValueError for a non-positive sample_rate or max_seconds.
    """
    path = Path(path)
    if sample_rate <= 0 or (max_seconds is not None and max_seconds <= 0):
        raise ValueError(f"sample_rate and max_seconds must be positive, got {sample_rate} and {max_seconds}")
    head = check_file(path)
    decode_seconds = None if max_seconds is None else max_seconds + _RESAMPLE_MARGIN_SECONDS
    samples, source_rate = decode_samples(path, head, decode_seconds)
    if len(samples) == 0:
        raise AudioError(path, "contains no audio samples (zero length); re-export it")
    if len(samples) < min(MIN_SECONDS, max_seconds or MIN_SECONDS) * source_rate:
        raise AudioError(
            path,
            f"is too short: {len(samples)} sample{'s' if len(samples) != 1 else ''} "
            f"({len(samples) / source_rate:.4f} s); a file needs at least {MIN_SECONDS} s of audio",
        )
    stereo = _to_stereo(samples)
    if reject_silent and (peak := _peak_dbfs(stereo)) < SILENCE_DBFS:  # of the channels kept
        raise AudioError(path, f"is silent: its peak is {peak:.1f} dBFS, below {SILENCE_DBFS:.0f} dBFS; remove it")
    if source_rate != sample_rate:
        stereo = soxr.resample(np.ascontiguousarray(stereo), source_rate, sample_rate, quality="HQ")
    if max_seconds is not None:
        stereo = stereo[: round(max_seconds * sample_rate)]
    return np.ascontiguousarray(np.clip(stereo, -1.0, 1.0, dtype=np.float32).T)


def probe_audio(path: str | Path) -> AudioInfo:
    """Duration, sample rate, channels and frames of a file from its headers (cheap: no decode).

    Lossy formats may decode to a few ms more or less than their headers say. Raises AudioError
    for the same per-file problems as `load_audio`, except silence and shortness, which need
    the samples.
    """
    path = Path(path)
    header = read_header(path, check_file(path))
    if header.frames == 0:
        raise AudioError(path, "contains no audio samples (zero length); re-export it")
    return AudioInfo(path, header.frames / header.sample_rate, header.sample_rate, header.channels, header.frames)


def normalize_loudness(audio: np.ndarray, sample_rate: int, mode: str) -> np.ndarray:
    """Scale audio by one gain (no compression, no clipping) according to `mode`.

    - "none": the input, unchanged (the same object).
    - "peak": peak at -1 dBFS.
    - "lufs": integrated loudness -14 LUFS (BS.1770-4); if that gain would push the peak over
      full scale, the gain is lowered so the peak is exactly 0 dBFS (then the result is quieter
      than -14 LUFS, never clipped).
    - "peak_lufs": -14 LUFS, with the peak held at or below -1 dBFS the same way (1 dB headroom
      for lossy re-encoding and resampling overshoot).
    In: [channels, samples] (1 or 2 channels) float audio. Out: float32, same shape.
    Raises ValueError for an unknown mode (naming the valid ones); LoudnessError (a ValueError
    and an AceStepError) for silent audio and, in the LUFS modes, for audio without measurable
    loudness (under 0.4 s, or every block below the -70 LUFS gate).
    """
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"unknown normalization mode {mode!r}; valid modes are {', '.join(NORMALIZATION_MODES)}")
    if mode == "none":
        return audio
    samples = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak == 0.0:
        raise LoudnessError(f"cannot normalize silent audio (peak 0) with mode {mode!r}")
    peak_target = 10.0 ** (PEAK_TARGET_DBFS / 20.0)
    if mode == "peak":
        gain = peak_target / peak
    else:
        loudness = integrated_loudness(samples, sample_rate)
        if not math.isfinite(loudness):
            raise LoudnessError(
                "cannot normalize to -14 LUFS: the audio has no measurable loudness (shorter than 0.4 s, "
                "or every block below -70 LUFS); use mode 'peak' or 'none'"
            )
        ceiling = 1.0 if mode == "lufs" else peak_target
        gain = min(10.0 ** ((LUFS_TARGET - loudness) / 20.0), ceiling / peak)
    return np.clip(samples * np.float32(gain), -1.0, 1.0)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write [channels, samples] (or 1-D mono) float audio as 24-bit PCM WAV, atomically: a
    temporary file in the same folder renamed over `path`, so a reader never sees half a file.

    Values are clipped to [-1, 1] first (libsndfile would wrap them). Parent folders are created.
    Out: `path`. Raises ValueError for NaN/inf samples or a shape other than 1-D/2-D; OSError
    when the folder is not writable or the disk is full (nothing is left behind).
    """
    path = Path(path)
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[np.newaxis, :]
    if samples.ndim != 2:
        raise ValueError(f"expected audio shaped [channels, samples], got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError(f"refusing to write {path}: the audio contains NaN or infinite samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(temporary, np.clip(samples, -1.0, 1.0).T, sample_rate, subtype=WAV_SUBTYPE, format="WAV")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


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
    if segment_seconds <= 0 or not 0 <= min_tail_seconds <= segment_seconds:
        raise ValueError(
            f"need segment_seconds > 0 and 0 <= min_tail_seconds <= segment_seconds, "
            f"got {segment_seconds} and {min_tail_seconds}"
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
    AudioError for a file `load_audio` rejects or one too short for any part; ValueError for
    bad settings.
    """
    path, out_dir = Path(path), Path(out_dir)
    _check_split_settings(segment_seconds, min_tail_seconds)
    neighbours = list(path.parent.iterdir()) if path.parent.is_dir() else []
    return _split(path, out_dir, _part_stem(path, neighbours), segment_seconds, min_tail_seconds, {path.resolve()})


def _audio_files(in_dir: Path, out_dir: Path) -> list[Path]:
    """Audio files under `in_dir`, sorted, leaving out anything inside `out_dir`."""
    out_resolved = out_dir.resolve()
    found = []
    for candidate in sorted(in_dir.rglob("*")):
        if candidate.suffix.lower() not in AUDIO_EXTENSIONS or not candidate.is_file():
            continue
        if out_resolved == candidate.resolve().parent or out_resolved in candidate.resolve().parents:
            continue
        found.append(candidate)
    return found


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
    `out_dir` itself; ValueError for bad settings; OSError from writing (e.g. a full disk).
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
