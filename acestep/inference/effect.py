"""The adapter effect: how far an adapter moves a render away from the base model's, in dB.

Renders at several strengths share their noise (`PreviewRenderer.render`), so the renders at
strength 0 and at strength S differ only by what the adapter does. The effect of strength S is the
mean absolute difference between the two renders' log-mel power spectrograms (`mel_power_db`: 128
mel bands, 2048-sample frames every 512 samples), after both are floored at TOP_DB below the louder
one's peak, so that what happens in near-silence does not count. Renders are peak-normalised to
-1 dBFS, so the figure measures changes of the sound over time and frequency (timbre, notes,
rhythm), hardly of level.

0 dB is the same sound: an adapter that has not learned anything yet (LoRA starts at zero), or a
prompt it does not act on. It grows as the adapter learns; compare it between the previews of a
run, and between strengths, rather than against a fixed scale.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from acestep.errors import PreviewError
from acestep.inference.render import TOP_DB, mel_power_db, strength_label


def spectral_difference_db(audio: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference in dB between the log-mel spectrograms of two renders of the same
    length (`[channels, samples]`, 48 kHz), both floored at TOP_DB below the louder peak. Raises
    PreviewError when the lengths differ."""
    audio, reference = np.asarray(audio), np.asarray(reference)
    if audio.shape[-1] != reference.shape[-1]:
        raise PreviewError(f"renders of different lengths ({audio.shape[-1]} and {reference.shape[-1]} samples) "
                           "cannot be compared; render them with the same duration")
    a, b = mel_power_db(audio), mel_power_db(reference)
    floor = max(a.max(), b.max()) - TOP_DB
    return float(np.abs(np.maximum(a, floor) - np.maximum(b, floor)).mean())


def adapter_effects(renders: Mapping[float, np.ndarray]) -> dict[str, float]:
    """{strength label: effect in dB} of each strength other than 0, measured against the render
    at strength 0; {} when 0 was not rendered."""
    base = next((audio for strength, audio in renders.items() if strength == 0), None)
    if base is None:
        return {}
    return {strength_label(strength): round(spectral_difference_db(audio, base), 3)
            for strength, audio in renders.items() if strength != 0}


def recorded_effects(record: Mapping | None) -> dict[str, float]:
    """The effects a `preview.json` record holds (its `effect_db`), or {} when it holds none or
    something else."""
    effects = (record or {}).get("effect_db")
    if not isinstance(effects, dict) or not all(isinstance(value, int | float) and not isinstance(value, bool)
                                                for value in effects.values()):
        return {}
    return {str(label): float(value) for label, value in effects.items()}


def effect_summary(effects: Mapping[str, float]) -> str:
    """"strength 0.5: 1.30 dB, strength 1: 4.21 dB from the base model", or "" without effects."""
    if not effects:
        return ""
    return ", ".join(f"strength {label}: {value:.2f} dB" for label, value in effects.items()) + " from the base model"
