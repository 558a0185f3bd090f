"""Decoding through the ffmpeg command-line tools, for files libsndfile cannot read (m4a/AAC/ALAC,
some opus and odd WAV codecs).

ffmpeg is called directly (ffprobe for the stream layout, ffmpeg for 32-bit float samples at the
file's own rate) rather than through pydub: pydub looks ffmpeg up once at import time, decodes
through 16-bit PCM by default, and needs `audioop`, which Python 3.13 removes. Resampling stays
with soxr in `acestep.audio.io`, so every format goes through the same resampler.

Failures raise AudioError whose reason is the tool's own message ("ffprobe: Invalid argument");
`acestep.audio.io` wraps it into a sentence for the user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acestep.errors import AudioError

INSTALL_HINT = (
    "install ffmpeg and put it on PATH (Debian/Ubuntu: sudo apt-get install ffmpeg; "
    "macOS: brew install ffmpeg; Windows: winget install Gyan.FFmpeg)"
)


@dataclass(frozen=True)
class StreamInfo:
    """The first audio stream of a file as ffprobe reports it; duration is None when unknown."""

    sample_rate: int
    channels: int
    duration: float | None


def available() -> bool:
    """Whether both ffmpeg and ffprobe are on PATH (checked on every call, never cached)."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def require(path: Path) -> None:
    """Raise AudioError for `path` saying that ffmpeg is needed and how to install it."""
    if not available():
        kind = f"{path.suffix} files" if path.suffix else "this file"
        raise AudioError(path, f"decoding {kind} needs ffmpeg, which was not found; {INSTALL_HINT}")


def _tool_message(stderr: bytes, path: Path) -> str:
    """The last line ffmpeg/ffprobe printed, without the file name it repeats."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    message = lines[-1] if lines else "no message"
    return message.replace(f"file:{path}: ", "").replace(f"file:{path}", "")


def probe_stream(path: Path) -> StreamInfo:
    """Sample rate, channels and duration of the first audio stream of `path`.

    Raises AudioError when ffmpeg is missing, the file is not a media file ffprobe can parse, or
    it has no audio stream.
    """
    require(path)
    command = [
        "ffprobe", "-v", "error", "-select_streams", "a:0",
        "-show_entries", "stream=sample_rate,channels,duration:format=duration", "-of", "json", f"file:{path}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AudioError(path, f"ffprobe: {_tool_message(result.stderr, path)}")
    report = json.loads(result.stdout or b"{}")
    streams = report.get("streams") or []
    if not streams:
        raise AudioError(path, "contains no audio stream")
    stream = streams[0]
    duration = stream.get("duration") or (report.get("format") or {}).get("duration")
    return StreamInfo(int(stream["sample_rate"]), int(stream["channels"]), float(duration) if duration else None)


def decode(path: Path, stream: StreamInfo, max_seconds: float | None = None) -> np.ndarray:
    """Samples of the first audio stream at its own rate, float32 [frames, channels].

    `max_seconds` limits decoding to the start of the file. Raises AudioError when ffmpeg
    is missing or fails on the file.
    """
    require(path)
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", f"file:{path}", "-map", "0:a:0", "-vn"]
    if max_seconds is not None:
        command += ["-t", f"{max_seconds:.6f}"]
    command += ["-f", "f32le", "-acodec", "pcm_f32le", "-"]
    result = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AudioError(path, f"ffmpeg: {_tool_message(result.stderr, path)}")
    samples = np.frombuffer(result.stdout, dtype="<f4")
    usable = len(samples) - len(samples) % stream.channels
    return samples[:usable].reshape(-1, stream.channels).astype(np.float32, copy=True)
