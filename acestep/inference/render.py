"""Preview files: a 16-bit WAV and a log-mel spectrogram PNG (numpy STFT, Pillow; no matplotlib),
and the `preview.json` record of what a folder of renders was made from.

Both are written to a temporary name and renamed, so a reader that sees a file sees all of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from acestep.errors import PreviewError
from acestep.files import write_failure

SAMPLE_RATE = 48_000
BASE_NAME = "base"  # file stem of a render without an adapter
RECORD_NAME = "preview.json"  # what was rendered, beside the files (read back by the Listen and Train tabs)
N_FFT = 2048
HOP = 512
N_MELS = 128
TOP_DB = 80.0
# Viridis at six stops (matplotlib's values), interpolated linearly: dark blue = quiet, yellow = loud.
_COLORMAP = np.array([[68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81],
                      [253, 231, 37]], dtype=np.float64)


def render_order(stem: str) -> float:
    """Sort key of a render's file stem: `base` (the model alone) first, then `strength-S` by S."""
    try:
        return float(stem.removeprefix("strength-"))
    except ValueError:
        return -1.0


def strength_label(strength: float) -> str:
    """How a strength is written in file names, records and events: 0.5 -> "0.5", 1.0 -> "1"."""
    return f"{strength:g}"


def strength_name(strength: float) -> str:
    """File stem of one strength: 0 -> strength-0, 0.5 -> strength-0.5, 1 -> strength-1."""
    return f"strength-{strength_label(strength)}"


def read_record(folder: str | Path) -> dict | None:
    """The `preview.json` of a render folder, or None when there is none or it cannot be read."""
    try:
        record = json.loads((Path(folder) / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters on the HTK mel scale, `[n_mels, n_fft // 2 + 1]`, each peaking at 1."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2))
    low, center, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - low) / (center - low)
    falling = (high - bins[None]) / (high - center)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def mel_power_db(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """dB log-mel power spectrogram of the channel mean, `[N_MELS, 1 + n // HOP]` (centred frames,
    Hann window), floored at -100 dB only."""
    mono = np.asarray(audio, dtype=np.float64)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    padded = np.pad(mono, (N_FFT // 2, N_FFT // 2), mode="reflect" if mono.size > N_FFT // 2 else "constant")
    count = 1 + (padded.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, shape=(count, N_FFT),
                                             strides=(padded.strides[0] * HOP, padded.strides[0]))
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT + 1)[:-1], axis=1)) ** 2
    mel = mel_filterbank(sample_rate) @ power.T
    return 10.0 * np.log10(np.maximum(mel, 1e-10))


def log_mel_spectrogram(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`mel_power_db`, clipped to TOP_DB below its maximum."""
    db = mel_power_db(audio, sample_rate)
    return np.maximum(db, db.max() - TOP_DB)


def spectrogram_image(audio: np.ndarray, sample_rate: int = SAMPLE_RATE):
    """A Pillow RGB image of the log-mel spectrogram: width = STFT frames (1 + n // 512), height =
    N_MELS, low frequencies at the bottom."""
    from PIL import Image

    db = log_mel_spectrogram(audio, sample_rate)
    span = db.max() - db.min()
    level = (db - db.min()) / span if span > 0 else np.zeros_like(db)
    position = level[::-1] * (len(_COLORMAP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_COLORMAP) - 2)
    weight = (position - low)[..., None]
    rgb = _COLORMAP[low] * (1 - weight) + _COLORMAP[low + 1] * weight
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def _replace_atomically(path: Path, write) -> None:
    """`write(temporary path)`, then rename it to `path`; an OSError (a full disk) is raised as
    PreviewError naming the file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise PreviewError(f"{path}: cannot write the preview ({write_failure(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_preview(audio: np.ndarray, folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write `<folder>/<name>.wav` (48 kHz, 16-bit) and `<folder>/<name>.png` (the spectrogram);
    the folder is created. Returns `(wav, png)`. Raises PreviewError for audio that is not finite
    stereo/mono samples, a name that is not a plain file name, or a file that cannot be written
    (a full disk)."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise PreviewError(f"preview audio must be [channels (1 or 2), samples], got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise PreviewError("preview audio holds NaN or infinite samples; the model produced non-finite latents")
    if not name or Path(name).name != name or name.startswith("."):
        raise PreviewError(f"preview name {name!r} must be a plain file name")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreviewError(f"{folder}: cannot create the preview folder ({write_failure(exc)})") from None
    wav, png = folder / f"{name}.wav", folder / f"{name}.png"
    _replace_atomically(wav, lambda p: sf.write(p, np.clip(audio, -1.0, 1.0).T, SAMPLE_RATE, subtype="PCM_16",
                                                format="WAV"))
    image = spectrogram_image(audio)
    _replace_atomically(png, lambda p: image.save(p, format="PNG"))
    return wav, png
