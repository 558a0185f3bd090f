"""Audio files for the audio tests: real songs re-encoded in each format, and what soundfile reads."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

FFMPEG_ENCODERS = {".mp3": ["-c:a", "libmp3lame", "-b:a", "192k"], ".opus": ["-c:a", "libopus", "-b:a", "128k"],
                   ".m4a": ["-c:a", "aac", "-b:a", "192k"]}  # fmt: skip


def need_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg is not installed; install it: sudo apt-get install -y ffmpeg")


def encode_as(source: Path, target: Path) -> Path:
    """`source` (a WAV) re-encoded as `target`'s format: soundfile for wav/flac/ogg, ffmpeg else."""
    if target.suffix in FFMPEG_ENCODERS:
        need_ffmpeg()
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *FFMPEG_ENCODERS[target.suffix]]
        subprocess.run([*command, str(target)], check=True, capture_output=True)
    else:
        samples, rate = sf.read(source, dtype="int16", always_2d=True)
        sf.write(target, samples, rate, **({"subtype": "PCM_16"} if target.suffix == ".wav" else {}))
    return target


def ffmpeg_encode(source: Path, target: Path, *options: str) -> Path:
    """`source` encoded by ffmpeg into `target` with the given output options (codec, bitrate...)."""
    need_ffmpeg()
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *options, str(target)]
    subprocess.run(command, check=True, capture_output=True)
    return target


def truncated_copy(source: Path, target: Path, fraction: float = 0.4) -> Path:
    """The first `fraction` of the bytes of `source`, as an interrupted download leaves a file."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def reference_samples(path: Path) -> np.ndarray:
    """[channels, frames] float32 of a file read directly by soundfile (no resampling)."""
    samples, _ = sf.read(path, dtype="float32", always_2d=True)
    return samples.T
