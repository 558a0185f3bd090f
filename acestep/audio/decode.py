"""From a path to samples at the file's own rate, or to its header figures, with one AudioError
per problem: missing, a folder, unsupported extension, unreadable, empty, text, corrupt.

libsndfile (soundfile) goes first for every extension it knows (wav, flac, ogg, mp3, opus); m4a
goes straight to ffmpeg. When libsndfile refuses a file, ffmpeg gets a try (it reads WAV codecs
and Opus variants libsndfile does not); if ffmpeg is missing, the error says so: for m4a and opus
it is the fix ("install ffmpeg"), for the others it is a remark after the decode error.
A decode that ends well short of the length the headers state (a half-downloaded MP3, a cut
FLAC) is refused as truncated rather than returned short. MP3 states an exact length only in a
Xing/Info frame (what LAME and ffmpeg write); without one, its length is an estimate from the
first frame's bitrate, where libsndfile stops reading (seconds early in a VBR file), so ffmpeg,
which reads to the end, decodes such an MP3 (and is then required, like for m4a).
`acestep.audio.io` builds the public API (resampling, stereo, silence) on top of this.
"""

from __future__ import annotations

import math
import re
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
# Codec delay and padding (MP3 up to ~2300 frames, AAC ~3100, Opus ~1300) let a whole file decode
# a little short of its stated length; a truncated one falls short by far more.
_SHORTFALL_TOLERANCE_FRAMES = 4096
_MP3_SYNC = re.compile(rb"\xff[\xe0-\xff]")
_XING_OFFSETS = (13, 21, 36)  # after the 4-byte frame header and 9, 17 or 32 bytes of side information


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
        samples = ffmpeg.decode(path, stream, max_seconds)
    except AudioError as error:
        raise _undecodable(path, head, _both_failed(libsndfile_failure, error.reason)) from None
    if stream.duration is not None:
        stated = round(stream.duration * stream.sample_rate)
        _check_complete(path, len(samples), stated, stream.sample_rate, max_seconds)
    return samples, stream.sample_rate


def decode_samples(path: Path, head: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Samples of `path` at its own rate: (float32 [frames, channels], sample rate).

    Integer PCM comes scaled to [-1, 1); nothing is clipped or resampled. `max_seconds` decodes
    only the start. `head` is what `check_file` returned. Raises AudioError when no decoder can
    read the file, ffmpeg is missing where needed, or the file is truncated (it decodes to
    clearly fewer frames than its headers state, or than `max_seconds` asks of them).
    """
    if path.suffix.lower() in _FFMPEG_ONLY:
        return _decode_with_ffmpeg(path, head, None, max_seconds)
    if not _states_exact_length(path):
        if not ffmpeg.available():
            raise AudioError(path, "is an MP3 without a length header (Xing/Info frame), which libsndfile may stop "
                                   "reading seconds before its end; ffmpeg decodes it whole, and was not found: "
                                   f"{ffmpeg.INSTALL_HINT}; or re-export the file with LAME")
        return _decode_with_ffmpeg(path, head, None, max_seconds)
    try:
        with sf.SoundFile(path) as handle:
            frames = -1 if max_seconds is None else math.ceil(max_seconds * handle.samplerate)
            samples = handle.read(frames, dtype="float32", always_2d=True)
            stated, rate = handle.frames, handle.samplerate
    except (sf.LibsndfileError, RuntimeError) as error:
        return _decode_with_ffmpeg(path, head, _libsndfile_message(error), max_seconds)
    _check_complete(path, len(samples), stated, rate, max_seconds)
    return samples, rate


def _check_complete(path: Path, decoded: int, stated: int, rate: int, max_seconds: float | None) -> None:
    """Raise AudioError when `decoded` frames fall short of the `stated` ones (or of the first
    `max_seconds` of them) by more than codec delay and padding explain."""
    expected = stated if max_seconds is None else min(stated, math.ceil(max_seconds * rate))
    if expected - decoded <= _SHORTFALL_TOLERANCE_FRAMES or not _states_exact_length(path):
        return
    raise AudioError(
        path,
        f"is truncated or damaged: its header says {_seconds(stated, rate)} ({stated} frames) but only "
        f"{_seconds(decoded, rate)} ({decoded} frames) decode; re-download or re-export it",
    )


def _seconds(frames: int, rate: int) -> str:
    return f"{frames / rate:.1f} s"


def _states_exact_length(path: Path) -> bool:
    """Whether the headers of `path` give its exact length: every format does but MP3, whose
    length is exact only in a Xing/Info frame (the first frame; LAME and ffmpeg write one)."""
    if path.suffix.lower() != ".mp3":
        return True
    frame = _first_mp3_frame(path)
    return any(frame[offset : offset + 4] in (b"Xing", b"Info") for offset in _XING_OFFSETS)


def _first_mp3_frame(path: Path) -> bytes:
    """The first bytes of the first MPEG frame, after any ID3v2 tags (b"" when none is found)."""
    try:
        with path.open("rb") as handle:
            offset, tag = 0, handle.read(10)
            while len(tag) == 10 and tag.startswith(b"ID3"):  # 10-byte header, body, a footer when flagged
                offset += 10 + _syncsafe(tag[6:10]) + (10 if tag[5] & 0x10 else 0)
                handle.seek(offset)
                tag = handle.read(10)
            handle.seek(offset)
            data = handle.read(4096)
    except OSError:
        return b""
    sync = _MP3_SYNC.search(data)
    return data[sync.start() :] if sync else b""


def _syncsafe(size: bytes) -> int:
    """An ID3v2 size: 7 bits from each byte."""
    value = 0
    for byte in size:
        value = (value << 7) | (byte & 0x7F)
    return value


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
