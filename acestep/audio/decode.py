"""From a path to samples at the file's own rate, or to its header figures, with one AudioError
per problem: missing, a folder, unsupported extension, unreadable, empty, text, corrupt.

libsndfile (soundfile) goes first for every extension it knows (wav, flac, ogg, mp3, opus); m4a
goes straight to ffmpeg. When libsndfile refuses a file, ffmpeg gets a try (it reads WAV codecs
and Opus variants libsndfile does not); if ffmpeg is missing, the error says so: for m4a and opus
it is the fix ("install ffmpeg"), for the others it is a remark after the decode error.
`acestep.audio.io` builds the public API (resampling, stereo, silence) on top of this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from acestep.audio import ffmpeg
from acestep.errors import AudioError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a")  # lower-case; matched case-insensitively

_FFMPEG_ONLY = (".m4a",)  # libsndfile has no MP4 demuxer
_FFMPEG_REQUIRED = (".m4a", ".opus")  # a failure here is fixed by installing ffmpeg
_HEAD_BYTES = 512


@dataclass(frozen=True)
class Header:
    """Frames (at the file's own rate), sample rate and channels, as a file's headers give them."""

    frames: int
    sample_rate: int
    channels: int


def check_file(path: Path) -> bytes:
    """Raise AudioError unless `path` is a non-empty, readable file with a supported extension.

    Out: the file's first bytes (kept to tell a text file from a corrupt one).
    """
    if not path.exists():
        raise AudioError(path, "file not found; check the path")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioError(
            path, f"unsupported file type {path.suffix or '(no extension)'!r}; use one of {', '.join(AUDIO_EXTENSIONS)}"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as error:
        raise AudioError(path, f"cannot be read ({error.strerror or error}); check its permissions") from None
    if not head:
        raise AudioError(path, "file is empty (0 bytes); re-export or re-download it")
    return head


def looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes are printable UTF-8 text (no audio container starts so)."""
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\r\n\t" for char in text)


def _undecodable(path: Path, head: bytes, details: str) -> AudioError:
    if looks_like_text(head):
        return AudioError(path, f"is a text file, not audio (despite its {path.suffix} extension); remove it")
    return AudioError(path, f"is not a readable audio file: it is corrupt, truncated, or not audio ({details})")


def _libsndfile_message(error: Exception) -> str:
    message = str(error).split(": ", 1)[-1].strip() if isinstance(error, sf.LibsndfileError) else str(error)
    if not message or "does not exist" in message:  # what libsndfile says of damaged MP3 data; the file exists
        message = "unrecognised or damaged data"
    return f"libsndfile: {message}"


def _ffmpeg_stream(path: Path, head: bytes, libsndfile_failure: str | None) -> ffmpeg.StreamInfo:
    """ffprobe's view of `path` once libsndfile has failed (None: it was not tried)."""
    if not ffmpeg.available():
        if path.suffix.lower() in _FFMPEG_REQUIRED:
            ffmpeg.require(path)
        raise _undecodable(path, head, f"{libsndfile_failure}; ffmpeg, which reads more variants, is not installed")
    try:
        return ffmpeg.probe_stream(path)
    except AudioError as error:
        raise _undecodable(path, head, _both_failed(libsndfile_failure, error.reason)) from None


def _both_failed(libsndfile_failure: str | None, ffmpeg_reason: str) -> str:
    return ffmpeg_reason if libsndfile_failure is None else f"libsndfile and ffmpeg both failed; {ffmpeg_reason}"


def _decode_with_ffmpeg(
    path: Path, head: bytes, libsndfile_failure: str | None, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    stream = _ffmpeg_stream(path, head, libsndfile_failure)
    try:
        return ffmpeg.decode(path, stream, max_seconds), stream.sample_rate
    except AudioError as error:
        raise _undecodable(path, head, _both_failed(libsndfile_failure, error.reason)) from None


def decode_samples(path: Path, head: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Samples of `path` at its own rate: (float32 [frames, channels], sample rate).

    Integer PCM comes scaled to [-1, 1); nothing is clipped or resampled. `max_seconds` decodes
    only the start. `head` is what `check_file` returned. Raises AudioError when no decoder can
    read the file, or ffmpeg is missing where needed.
    """
    if path.suffix.lower() in _FFMPEG_ONLY:
        return _decode_with_ffmpeg(path, head, None, max_seconds)
    try:
        with sf.SoundFile(path) as handle:
            frames = -1 if max_seconds is None else math.ceil(max_seconds * handle.samplerate)
            return handle.read(frames, dtype="float32", always_2d=True), handle.samplerate
    except (sf.LibsndfileError, RuntimeError) as error:
        return _decode_with_ffmpeg(path, head, _libsndfile_message(error), max_seconds)


def read_header(path: Path, head: bytes) -> Header:
    """Frames, sample rate and channels from the headers (no decode, except for a file whose
    container states no duration, whose samples ffmpeg then counts). Raises AudioError as
    `decode_samples` does."""
    if path.suffix.lower() not in _FFMPEG_ONLY:
        try:
            with sf.SoundFile(path) as handle:
                return Header(handle.frames, handle.samplerate, handle.channels)
        except (sf.LibsndfileError, RuntimeError) as error:
            libsndfile_failure = _libsndfile_message(error)
    else:
        libsndfile_failure = None
    stream = _ffmpeg_stream(path, head, libsndfile_failure)
    if stream.duration is not None:
        return Header(round(stream.duration * stream.sample_rate), stream.sample_rate, stream.channels)
    samples, rate = _decode_with_ffmpeg(path, head, libsndfile_failure, None)
    return Header(len(samples), rate, stream.channels)
