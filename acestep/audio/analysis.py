"""Measurements on decoded audio: loudness (ITU-R BS.1770-4), peak, RMS, clipping, silence, the
content hash used to find duplicate files, and the musical analysis a labeller uses to fill or
check BPM and key (`analyze`; the estimators live in `acestep.audio.tempo` and `acestep.audio.key`).

Arrays are channels-first, `[channels, samples]` (or 1-D for mono), as `acestep.audio.io`
returns them. Everything here is a pure function of its inputs except `file_content_hash` and
`analyze`, which read a file.

Loudness follows BS.1770-4: K-weighting (a high-shelf "pre-filter" and the RLB high-pass),
mean square per channel over 400 ms blocks that overlap by 75 %, channel weights 1.0 (left and
right), an absolute gate at -70 LUFS and a relative gate 10 LU below the loudness of the blocks
that passed the absolute gate. The filters are derived from their analog prototypes for any
sample rate (as libebur128 and pyloudnorm do); at 48 kHz they reproduce the coefficients
tabulated in the Recommendation. The IIR filters are applied as a causal FFT convolution with
their impulse response, truncated where it has decayed below 1e-13 (numpy only, no scipy).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from acestep.audio.key import estimate_key
from acestep.audio.tempo import estimate_bpm
from acestep.errors import AudioError

SILENCE_DBFS = -60.0  # a file whose peak stays below this is "silent"
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
BLOCK_SECONDS = 0.4
STEP_SECONDS = 0.1  # 75 % overlap between 400 ms blocks
_LOUDNESS_OFFSET = -0.691  # BS.1770's constant: cancels the K-weighting gain at 997 Hz

# Analog prototypes of the two K-weighting stages (libebur128's parameterisation of BS.1770).
_SHELF_F0, _SHELF_GAIN_DB, _SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
_SHELF_VB_EXPONENT = 0.4996667741545416
_HIGHPASS_F0, _HIGHPASS_Q = 38.13547087602444, 0.5003270373238773
_IMPULSE_DECAY = 30.0  # keep the impulse response until it decays by e^-30 (about 1e-13)

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class AudioStats:
    """Level figures of one decoded clip, for the dataset report.

    peak_dbfs: sample peak in dBFS (-inf for digital silence); rms_dbfs: RMS over all samples of
    all channels in dBFS (a full-scale sine reads -3.01); loudness_lufs: integrated loudness
    (-inf when nothing passes the gates or the clip is shorter than 400 ms); clipped_fraction:
    share of samples with |x| >= 0.999; silent: peak below -60 dBFS; duration: seconds.
    """

    peak_dbfs: float
    rms_dbfs: float
    loudness_lufs: float
    clipped_fraction: float
    silent: bool
    duration: float


def k_weighting_coefficients(sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads at `sample_rate`.

    In: the sample rate in Hz. Out: ((b, a) of the high-shelf pre-filter, (b, a) of the RLB
    high-pass), each `a` normalised so a[0] == 1. Raises ValueError for a rate too low to hold
    the shelf (under 4 kHz) or not positive.
    """
    if sample_rate < 4000:
        raise ValueError(f"sample_rate must be at least 4000 Hz for K-weighting, got {sample_rate}")
    k = math.tan(math.pi * _SHELF_F0 / sample_rate)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh**_SHELF_VB_EXPONENT
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf_b = np.array([vh + vb * k / _SHELF_Q + k * k, 2.0 * (k * k - vh), vh - vb * k / _SHELF_Q + k * k]) / a0
    shelf_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / _SHELF_Q + k * k]) / a0

    k = math.tan(math.pi * _HIGHPASS_F0 / sample_rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    highpass_b = np.array([1.0, -2.0, 1.0])
    highpass_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / _HIGHPASS_Q + k * k]) / a0
    return (shelf_b, shelf_a), (highpass_b, highpass_a)


def biquad_filter(x: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Direct-form I biquad on a 1-D signal, sample by sample (zero initial state).

    Slow (pure Python); it is the reference the fast K-weighting is tested against and is used
    to compute impulse responses. In: x 1-D, b and a of length 3 with a[0] == 1. Out: float64.
    """
    y = np.zeros(len(x), dtype=np.float64)
    x1 = x2 = y1 = y2 = 0.0
    b0, b1, b2 = (float(v) for v in b)
    a1, a2 = float(a[1]), float(a[2])
    for i, xi in enumerate(np.asarray(x, dtype=np.float64).tolist()):
        yi = b0 * xi + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
        x2, x1, y2, y1 = x1, xi, y1, yi
        y[i] = yi
    return y


@lru_cache(maxsize=8)
def _k_weighting_impulse_response(sample_rate: int) -> np.ndarray:
    """Impulse response of both K-weighting stages in cascade, cut once it has decayed."""
    (shelf_b, shelf_a), (hp_b, hp_a) = k_weighting_coefficients(sample_rate)
    slowest_pole = max(math.sqrt(abs(shelf_a[2])), math.sqrt(abs(hp_a[2])))
    length = int(math.ceil(_IMPULSE_DECAY / -math.log(slowest_pole))) + 8
    impulse = np.zeros(length)
    impulse[0] = 1.0
    response = biquad_filter(biquad_filter(impulse, shelf_b, shelf_a), hp_b, hp_a)
    response.setflags(write=False)
    return response


def k_weight(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """K-weighted copy of a 1-D signal (causal, zero initial state), float64, same length.

    Equal to running both biquads sample by sample, to about 1e-13 of full scale.
    """
    x = np.asarray(signal, dtype=np.float64)
    h = _k_weighting_impulse_response(sample_rate)
    n, taps = len(x), len(h)
    y = np.zeros(n + taps - 1)
    if n == 0:
        return y[:0]
    nfft = 1 << max(16, (4 * taps).bit_length())
    hop = nfft - taps + 1
    spectrum = np.fft.rfft(h, nfft)
    for start in range(0, n, hop):  # overlap-add keeps memory bounded for long audio
        block = x[start : start + hop]
        out = np.fft.irfft(np.fft.rfft(block, nfft) * spectrum, nfft)[: len(block) + taps - 1]
        y[start : start + len(out)] += out
    return y[:n]


def _as_channels(audio: np.ndarray) -> np.ndarray:
    """`audio` as a [channels, samples] array with 1 or 2 channels; ValueError otherwise."""
    array = np.asarray(audio)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[0] not in (1, 2):
        raise ValueError(
            f"expected audio shaped [channels, samples] with 1 or 2 channels, got shape {array.shape}; "
            "transpose a [samples, channels] array first"
        )
    return array


def _block_mean_squares(weighted: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean square of each 400 ms block (hop 100 ms) of one K-weighted channel; empty if too short."""
    hops = int(math.floor(len(weighted) / (STEP_SECONDS * sample_rate) + 1e-9))
    blocks = hops - 3
    if blocks < 1:
        return np.zeros(0)
    edges = np.round(np.arange(hops + 1) * (STEP_SECONDS * sample_rate)).astype(np.int64)
    squared = weighted[: edges[-1]] ** 2
    hop_sums = np.add.reduceat(squared, edges[:-1])
    block_sums = hop_sums[:-3] + hop_sums[1:-2] + hop_sums[2:-1] + hop_sums[3:]
    block_lengths = edges[4:] - edges[:-4]
    return block_sums / block_lengths


def _loudness(mean_square_sum: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(divide="ignore"):
        return _LOUDNESS_OFFSET + 10.0 * np.log10(mean_square_sum)


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS after ITU-R BS.1770-4 (gated).

    In: audio [channels, samples] or [samples] (1 or 2 channels, any float or int dtype taken
    as-is, i.e. floats in [-1, 1]), its sample rate. Out: LUFS; -inf for silence, for audio
    shorter than one 400 ms block, or when no block passes the -70 LUFS gate. A 0 dBFS 997 Hz
    sine in one channel reads -3.01 LUFS; in both channels of a stereo pair, 0.0 LUFS.
    Raises ValueError for another shape or channel count.
    """
    channels = _as_channels(audio)
    per_channel = [_block_mean_squares(k_weight(channel, sample_rate), sample_rate) for channel in channels]
    block_power = np.sum(per_channel, axis=0)  # channel weights are 1.0 for left and right
    if block_power.size == 0:
        return float("-inf")
    block_loudness = _loudness(block_power)
    above_absolute = block_loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return float("-inf")
    relative_gate = _loudness(block_power[above_absolute].mean()) + RELATIVE_GATE_LU
    gated = above_absolute & (block_loudness > relative_gate)
    return float(_loudness(block_power[gated].mean()))


def _dbfs(amplitude: float) -> float:
    return 20.0 * math.log10(amplitude) if amplitude > 0.0 else float("-inf")


def audio_stats(audio: np.ndarray, sample_rate: int) -> AudioStats:
    """Peak, RMS, loudness, clipping and silence of one clip (see `AudioStats`).

    In: audio [channels, samples] or [samples] with 1 or 2 channels, its sample rate. Raises
    ValueError for another shape.
    """
    channels = _as_channels(audio)
    samples = channels.astype(np.float64, copy=False)
    if samples.size == 0:
        return AudioStats(float("-inf"), float("-inf"), float("-inf"), 0.0, True, 0.0)
    magnitude = np.abs(samples)
    peak = _dbfs(float(magnitude.max()))
    return AudioStats(
        peak_dbfs=peak,
        rms_dbfs=_dbfs(math.sqrt(float(np.mean(samples * samples)))),
        loudness_lufs=integrated_loudness(samples, sample_rate),
        clipped_fraction=float(np.count_nonzero(magnitude >= CLIP_LEVEL)) / samples.size,
        silent=peak < SILENCE_DBFS,
        duration=channels.shape[1] / sample_rate,
    )


def file_content_hash(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MB chunks; equal hashes mean duplicate files.

    Raises AudioError naming the file when it is missing or unreadable.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise AudioError(path, "file not found; check the path") from None
    except IsADirectoryError:
        raise AudioError(path, "is a folder, not an audio file") from None
    except OSError as error:
        raise AudioError(path, f"cannot be read ({error.strerror or error}); check its permissions") from None
    return digest.hexdigest()


ANALYSIS_SAMPLE_RATE = 22_050  # tempo and key need nothing above 11 kHz; half of 44.1 kHz halves the work


@dataclass(frozen=True)
class AudioAnalysis:
    """Tempo and key of one file, from the signal alone (no model).

    duration: seconds of the whole file; bpm: beats per minute, None when no steady beat was
    found; bpm_confidence: 0..1 (metrical strength of the beat); key: tonic spelled C C# D Eb E
    F F# G Ab A Bb B, or None; scale: "major" | "minor" | None; key_confidence: 0..1 (the best
    key's profile correlation minus the runner-up's).
    """

    duration: float
    bpm: float | None
    bpm_confidence: float
    key: str | None
    scale: str | None
    key_confidence: float

    @property
    def keyscale(self) -> str:
        """The key as the dataset and the ACE-Step prompt write it ("C major", "A minor"); ""
        when no key was found."""
        return f"{self.key} {self.scale}" if self.key and self.scale else ""


def analyze(path: str | Path, max_seconds: float | None = 240.0) -> AudioAnalysis:
    """Duration, tempo and key of an audio file.

    The file is decoded with `acestep.audio.io.load_audio` at 22.05 kHz and mixed to mono; only
    its first `max_seconds` are analysed (None: all of it). `duration` is the whole file's: the
    decoded length when the file ended sooner, otherwise its header's duration. A silent file
    is not an error: it gets bpm None and key None. Raises AudioError naming the file when it is
    missing, unreadable, corrupt, of an unsupported type or shorter than 0.1 s; ValueError for a
    non-positive max_seconds.
    """
    from acestep.audio.io import load_audio, probe_audio  # io imports this module for its loudness

    path = Path(path)
    audio = load_audio(path, sample_rate=ANALYSIS_SAMPLE_RATE, max_seconds=max_seconds, reject_silent=False)
    mono = audio.mean(axis=0, dtype=np.float64)
    duration = len(mono) / ANALYSIS_SAMPLE_RATE
    if max_seconds is not None and len(mono) >= round(max_seconds * ANALYSIS_SAMPLE_RATE):
        duration = max(duration, probe_audio(path).duration)
    bpm, bpm_confidence = estimate_bpm(mono, ANALYSIS_SAMPLE_RATE)
    key, scale, key_confidence = estimate_key(mono, ANALYSIS_SAMPLE_RATE)
    return AudioAnalysis(duration, bpm, bpm_confidence, key, scale, key_confidence)
