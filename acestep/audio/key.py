"""Key and mode of a piece of music from its audio, numpy only.

1. Spectral peaks: a Hann STFT of about 0.37 s (8192 points at 22.05 kHz, hop half a window);
   in each frame the local maxima from A0 to B6 (about 27-2030 Hz) within 60 dB of the frame's
   loudest bin, each refined by a parabola through the log magnitudes (frequency and amplitude
   between bins). Peaks carry the pitch; the spectrum between them is ignored.
2. Tuning: the amplitude-weighted circular mean of the peaks' deviation from the equal-tempered
   A440 grid, in semitones (-0.5..0.5); every peak is shifted by it before it is given a note.
3. Semitone spectrogram: each peak's amplitude goes to its nearest note (A0..B6), weighted by
   cos^2 of its distance in semitones, so a peak halfway between notes counts for little.
4. Note activations: non-negative least squares of the semitone spectrogram on harmonic
   templates (8 partials, the h-th at 0.6^(h-1) of the first), in the manner of Mauch and
   Dixon's NNLS chroma, solved by multiplicative updates. This takes the third and fifth harmonics - a fifth and a
   major third above - out of the pitch classes they would otherwise inflate.
5. Pitch-class profile: the activations summed over time and folded onto 12 pitch classes.
6. Key: Pearson correlation of the profile with the 24 rotations of the Krumhansl-Kessler major
   and minor profiles. The best wins; the confidence is its margin over the runner-up.

No key (None) for silence, for noise-like audio (energy-weighted spectral flatness of the
analysed band above 0.15: white noise 0.56, vinyl hiss 0.24, the rendered openmsx songs
0.003-0.071), or when no key profile fits (best correlation under 0.5: the Amen break 0.30, a
snare roll 0.48, brown noise 0.26; the songs 0.48-0.89, the lowest one modulating between two
keys).

Tonic spelling, one per pitch class: C C# D Eb E F F# G Ab A Bb B (sharps for C#, F#; flats for
Eb, Ab, Bb - the spellings most common in key annotations of popular music).
"""

from __future__ import annotations

import math

import numpy as np

from acestep.audio.spectrum import check_mono, stft_magnitude

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

LOWEST_NOTE, HIGHEST_NOTE = 21, 95  # MIDI numbers: A0 (27.5 Hz) .. B6 (1975.5 Hz)
HARMONICS, HARMONIC_DECAY = 8, 0.6
MAX_FLATNESS = 0.15  # energy-weighted spectral flatness above this: noise, no key
MIN_CORRELATION = 0.5  # best key-profile correlation below this: no key

_WINDOW_SECONDS = 0.37
_PEAK_FLOOR_DB = 60.0
_NNLS_ITERATIONS = 50
_SILENT_LEVEL_DB = -100.0  # frames whose loudest bin is below this (of full scale) hold no peaks


def _note_frequency(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def _key_stft(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    n_fft = 2 ** round(math.log2(_WINDOW_SECONDS * sample_rate))
    return stft_magnitude(signal, n_fft, n_fft // 2), n_fft


def _band(n_fft: int, sample_rate: int) -> tuple[int, int]:
    """First and one-past-last bins of the analysed band, leaving a neighbour bin on each side."""
    low = max(1, int(_note_frequency(LOWEST_NOTE - 0.5) * n_fft / sample_rate))
    high = min(n_fft // 2, int(min(_note_frequency(HIGHEST_NOTE + 0.5), 0.45 * sample_rate) * n_fft / sample_rate) + 1)
    return low, high


def spectral_flatness(magnitude: np.ndarray, low: int, high: int) -> float:
    """Energy-weighted mean over frames of the power spectrum's flatness (geometric over
    arithmetic mean) in bins [low, high); 1.0 for white noise's ideal, near 0 for tones.
    0.0 when every frame is silent."""
    power = magnitude[:, low:high].astype(np.float64) ** 2 + 1e-20
    energy = power.sum(axis=1)
    keep = energy > energy.max(initial=0.0) * 1e-6
    if not keep.any():
        return 0.0
    flatness = np.exp(np.log(power[keep]).mean(axis=1)) / power[keep].mean(axis=1)
    return float((flatness * energy[keep]).sum() / energy[keep].sum())


def spectral_peaks(magnitude: np.ndarray, n_fft: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima of each frame in the analysed band, refined between bins.

    In: |STFT| [frames, bins]. Out: (frame index, frequency in Hz, linear amplitude) per peak.
    """
    low, high = _band(n_fft, sample_rate)
    level = 20.0 * np.log10(np.maximum(magnitude, 1e-10))
    centre, left, right = level[:, low:high], level[:, low - 1 : high - 1], level[:, low + 1 : high + 1]
    loudest = level.max(axis=1, keepdims=True)
    is_peak = (centre > left) & (centre >= right) & (centre > loudest - _PEAK_FLOOR_DB) & (loudest > _SILENT_LEVEL_DB)
    frame, column = np.nonzero(is_peak)
    a, b, c = left[frame, column], centre[frame, column], right[frame, column]
    curvature = a - 2.0 * b + c
    offset = np.divide(0.5 * (a - c), curvature, out=np.zeros_like(b), where=curvature < 0)
    frequency = (low + column + offset) * sample_rate / n_fft
    amplitude = 10.0 ** ((b - 0.25 * (a - c) * offset) / 20.0)
    return frame, frequency, amplitude


def estimate_tuning(frequency: np.ndarray, weight: np.ndarray) -> float:
    """Deviation of the peaks from the A440 equal-tempered grid in semitones, -0.5..0.5
    (weighted circular mean); 0.0 when there are no peaks."""
    if len(frequency) == 0:
        return 0.0
    pitch = 69.0 + 12.0 * np.log2(frequency / 440.0)
    angle = 2.0 * np.pi * (pitch - np.round(pitch))
    return float(np.arctan2((weight * np.sin(angle)).sum(), (weight * np.cos(angle)).sum()) / (2.0 * np.pi))


def semitone_spectrogram(
    frame: np.ndarray, frequency: np.ndarray, amplitude: np.ndarray, frames: int, tuning: float
) -> np.ndarray:
    """Peak amplitudes gathered onto the notes A0..B6: float64 [notes, frames]."""
    pitch = 69.0 + 12.0 * np.log2(frequency / 440.0) - tuning
    nearest = np.round(pitch).astype(np.int64)
    weight = amplitude * np.cos(np.pi * np.minimum(np.abs(pitch - nearest), 0.5)) ** 2
    inside = (nearest >= LOWEST_NOTE) & (nearest <= HIGHEST_NOTE)
    notes = np.zeros((HIGHEST_NOTE - LOWEST_NOTE + 1, frames))
    np.add.at(notes, (nearest[inside] - LOWEST_NOTE, frame[inside]), weight[inside])
    return notes


def harmonic_templates(count: int = HARMONICS, decay: float = HARMONIC_DECAY) -> np.ndarray:
    """[notes, notes] matrix whose column n is note n's partials on the semitone grid (the h-th
    partial 12*log2(h) semitones up, rounded, with amplitude decay^(h-1)); cut at the grid's top."""
    size = HIGHEST_NOTE - LOWEST_NOTE + 1
    templates = np.zeros((size, size))
    for note in range(size):
        for harmonic in range(1, count + 1):
            row = note + round(12.0 * math.log2(harmonic))
            if row < size:
                templates[row, note] += decay ** (harmonic - 1)
    return templates


def note_activations(semitones: np.ndarray, iterations: int = _NNLS_ITERATIONS) -> np.ndarray:
    """Non-negative x minimising ||semitones - templates @ x|| (multiplicative updates).
    In and out: [notes, frames]."""
    templates = harmonic_templates()
    projected = templates.T @ semitones
    gram = templates.T @ templates
    activations = np.maximum(projected, 1e-12)
    for _ in range(iterations):
        activations *= projected / (gram @ activations + 1e-12)
    return activations


def pitch_class_profile(mono: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float, float]:
    """Tuning-corrected, harmonics-removed pitch-class energy of a whole excerpt.

    In: mono samples and their rate (8 kHz or more). Out: (profile [12] from C, tuning in
    semitones, spectral flatness); the profile is all zeros for silence. Raises ValueError like
    `estimate_key`.
    """
    signal = check_mono(mono, sample_rate)
    magnitude, n_fft = _key_stft(signal, sample_rate)
    flatness = spectral_flatness(magnitude, *_band(n_fft, sample_rate))
    frame, frequency, amplitude = spectral_peaks(magnitude, n_fft, sample_rate)
    tuning = estimate_tuning(frequency, amplitude)
    semitones = semitone_spectrogram(frame, frequency, amplitude, len(magnitude), tuning)
    activations = note_activations(semitones).sum(axis=1)
    classes = np.arange(LOWEST_NOTE, HIGHEST_NOTE + 1) % 12
    return np.bincount(classes, activations, 12), tuning, flatness


def key_correlations(profile: np.ndarray) -> np.ndarray:
    """Pearson correlation of a 12-bin profile with every key: [2, 12] (row 0 major, row 1 minor;
    column = tonic pitch class from C). All zeros for a flat profile."""
    centred = np.asarray(profile, dtype=np.float64) - np.mean(profile)
    norm = np.linalg.norm(centred)
    result = np.zeros((2, 12))
    if norm == 0.0:
        return result
    for row, reference in enumerate((MAJOR_PROFILE, MINOR_PROFILE)):
        shape = reference - reference.mean()
        rotations = np.stack([np.roll(shape, tonic) for tonic in range(12)])
        result[row] = rotations @ centred / (np.linalg.norm(shape) * norm)
    return result


def estimate_key(mono: np.ndarray, sample_rate: int) -> tuple[str | None, str | None, float]:
    """Tonic, mode and confidence of the key of an excerpt.

    In: mono samples (floats in [-1, 1]) and their sample rate (8 kHz or more). Out: (tonic,
    "major" | "minor", confidence in 0..1): the tonic spelled as in `PITCH_CLASSES`, the
    confidence the best key's correlation minus the runner-up's. (None, None, 0.0) for silence,
    noise-like audio and audio no key profile fits (see the module notes). Raises ValueError for
    a non-1-D signal, NaN/inf samples or a sample rate under 8 kHz.
    """
    profile, _, flatness = pitch_class_profile(mono, sample_rate)
    correlations = key_correlations(profile)
    ranked = np.sort(correlations, axis=None)[::-1]
    if profile.sum() <= 0.0 or flatness > MAX_FLATNESS or ranked[0] < MIN_CORRELATION:
        return None, None, 0.0
    mode, tonic = np.unravel_index(int(np.argmax(correlations)), correlations.shape)
    return PITCH_CLASSES[tonic], ("major", "minor")[mode], float(np.clip(ranked[0] - ranked[1], 0.0, 1.0))
