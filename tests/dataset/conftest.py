"""Small real audio files written on the fly (sine tones, noise, silence) for the dataset tests."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def write_audio(path: Path, seconds: float = 1.0, rate: int = 48_000, channels: int = 2, amplitude: float = 0.5,
                kind: str = "sine", frequency: float = 440.0, subtype: str | None = None) -> Path:
    """Write a short clip: "sine", "noise" (seeded) or "silence"; mp3 goes through ffmpeg."""
    frames = int(round(seconds * rate))
    t = np.arange(frames) / rate
    if kind == "sine":
        mono = amplitude * np.sin(2 * np.pi * frequency * t)
    elif kind == "noise":
        mono = amplitude * np.random.default_rng(int(frequency)).uniform(-1, 1, frames)
    else:
        mono = np.zeros(frames)
    # Slightly different channels, so stereo is really stereo.
    data = np.stack([mono * (1 - 0.1 * c) for c in range(channels)], axis=1).clip(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp3":
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            pytest.skip("ffmpeg is not installed (needed to write an mp3); install it: sudo apt-get install ffmpeg")
        wav = path.with_name(path.name + ".tmp.wav")
        sf.write(wav, data, rate, subtype="PCM_16")
        subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "128k", str(path)], check=True)
        wav.unlink()
    else:
        sf.write(path, data, rate, subtype=subtype)
    return path


@pytest.fixture
def make_audio():
    return write_audio
