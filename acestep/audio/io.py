"""Audio in and out: decode any supported file to 48 kHz stereo float32, normalise loudness, and
write WAV atomically (`acestep.audio.split` cuts long files into parts with these).

Arrays are channels-first, `[channels, samples]`, float32 in [-1, 1]. Every problem with one file
raises `AudioError(path, reason)` whose reason a user can act on, so batch jobs list failures per
file (`FileFailure`) and carry on.

Decoding (`acestep.audio.decode`): libsndfile reads wav, flac, ogg, mp3 and opus; ffmpeg reads
m4a and whatever libsndfile refuses. Resampling is soxr's "HQ" quality for every format.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from acestep.audio.analysis import SILENCE_DBFS, integrated_loudness
from acestep.audio.decode import check_file, decode_samples, read_header
from acestep.errors import AceStepError, AudioError

SAMPLE_RATE = 48_000
NORMALIZATION_MODES = ("none", "peak", "lufs", "peak_lufs")

PEAK_TARGET_DBFS = -1.0
LUFS_TARGET = -14.0
MIN_SECONDS = 0.1  # shorter than this is a glitch or a broken export, not something to train on
WAV_SUBTYPE = "PCM_24"

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

    Lossy formats may decode to a few ms more or less than their headers say; an MP3 without a
    Xing/Info frame states only an estimate, which can be seconds off. Raises AudioError
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
