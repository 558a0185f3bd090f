"""Short-time Fourier magnitudes for the tempo and key estimators (numpy only).

Frames start at sample 0 and step by `hop`; the signal is zero-padded at the end so its last
samples fall in a frame. A Hann window is used throughout. Frames are transformed in chunks so
a four-minute song never holds more than one chunk of complex spectra at once.
"""

from __future__ import annotations

import numpy as np

_CHUNK_FRAMES = 1024
MIN_ANALYSIS_RATE = 8000


def check_mono(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """`mono` as float64 after checking it can be analysed.

    Raises ValueError for a signal that is not 1-D, NaN or infinite samples, or a sample rate
    under 8 kHz (too little bandwidth for the onset bands and the key's pitch range).
    """
    signal = np.asarray(mono, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {signal.shape}; mix the channels first")
    if sample_rate < MIN_ANALYSIS_RATE:
        raise ValueError(
            f"sample_rate must be at least {MIN_ANALYSIS_RATE} Hz for tempo and key analysis, got {sample_rate}"
        )
    if not np.isfinite(signal).all():
        raise ValueError("the audio contains NaN or infinite samples")
    return signal


def frame_count(samples: int, n_fft: int, hop: int) -> int:
    """Number of frames `stft_magnitude` returns for `samples` samples (0 for an empty signal)."""
    if samples <= 0:
        return 0
    return 1 + max(0, -(-(samples - n_fft) // hop))


def stft_magnitude(mono: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| of a 1-D signal with a Hann window.

    In: mono samples (any float dtype), the FFT size and the hop in samples (both positive).
    Out: float32 [frames, n_fft // 2 + 1]; frame i covers samples [i*hop, i*hop + n_fft).
    Raises ValueError for a signal that is not 1-D or a non-positive n_fft / hop.
    """
    signal = np.asarray(mono, dtype=np.float32)
    if signal.ndim != 1:
        raise ValueError(f"expected a 1-D (mono) signal, got shape {signal.shape}")
    if n_fft <= 0 or hop <= 0:
        raise ValueError(f"n_fft and hop must be positive, got {n_fft} and {hop}")
    frames = frame_count(len(signal), n_fft, hop)
    out = np.zeros((frames, n_fft // 2 + 1), dtype=np.float32)
    if frames == 0:
        return out
    padded = np.zeros((frames - 1) * hop + n_fft, dtype=np.float32)
    padded[: len(signal)] = signal
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    views = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    for start in range(0, frames, _CHUNK_FRAMES):
        chunk = views[start : start + _CHUNK_FRAMES] * window
        out[start : start + len(chunk)] = np.abs(np.fft.rfft(chunk, axis=1))
    return out
