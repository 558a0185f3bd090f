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

The effect says that the adapter changes the sound, not in which direction. The latent distance to
the songs says that: the VAE latents of a render (`[frames, 64]`, before decoding) and those of
all the songs of a tensors folder (`songs_profile`) are each summed up by their per-channel mean
and standard deviation (a `LatentProfile`), and the distance is the root mean square over
channels of the Fréchet distance of the two one-dimensional Gaussians,
sqrt(mean_c((m1 - m2)^2 + (s1 - s2)^2)), in latent units. An adapter that pulls the renders
towards the songs' sound makes it smaller at strength 1 than at strength 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

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
    return _numbers((record or {}).get("effect_db"))


def _numbers(values) -> dict[str, float]:
    """{label: number} from a record's field, or {} when the field is not such a mapping."""
    if not isinstance(values, dict) or not all(isinstance(value, int | float) and not isinstance(value, bool)
                                               for value in values.values()):
        return {}
    return {str(label): float(value) for label, value in values.items()}


def effect_summary(effects: Mapping[str, float]) -> str:
    """"strength 0.5: 1.30 dB, strength 1: 4.21 dB from the base model", or "" without effects."""
    if not effects:
        return ""
    return ", ".join(f"strength {label}: {value:.2f} dB" for label, value in effects.items()) + " from the base model"


@dataclass(frozen=True)
class LatentProfile:
    """The per-channel mean and standard deviation of latents over all their frames, `[channels]`
    each, and how many frames they summed up."""

    mean: np.ndarray
    std: np.ndarray
    frames: int


def latent_profile(latents: Iterable[np.ndarray]) -> LatentProfile:
    """The profile of one or more latent arrays `[frames, channels]` taken together (a running sum
    in float64: one array in memory at a time). Raises PreviewError when there are no frames or the
    channel counts differ."""
    total = squares = None
    frames = 0
    for array in latents:
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or (total is not None and array.shape[1] != total.shape[0]):
            raise PreviewError(f"latents must be [frames, channels] with one channel count, got shape {array.shape}")
        if total is None:
            total, squares = np.zeros(array.shape[1]), np.zeros(array.shape[1])
        total += array.sum(axis=0)
        squares += np.square(array).sum(axis=0)
        frames += array.shape[0]
    if not frames:
        raise PreviewError("no latent frames to sum up")
    mean = total / frames
    return LatentProfile(mean, np.sqrt(np.maximum(squares / frames - np.square(mean), 0.0)), frames)


def songs_profile(tensors_dir: str | Path) -> LatentProfile:
    """The latent profile of all the songs of a preprocessed tensors folder (their
    `target_latents`, read one at a time). Raises PreprocessError naming a folder that is not one
    or a damaged file."""
    from acestep.preprocess.manifest import read_manifest
    from acestep.preprocess.tensors import load_tensors  # torch: only when songs are measured

    directory = Path(tensors_dir)
    manifest = read_manifest(directory)
    return latent_profile(load_tensors(directory / entry.tensors, ("target_latents",))["target_latents"].float().numpy()
                          for entry in manifest.samples)


def profile_distance(profile: LatentProfile, reference: LatentProfile) -> float:
    """sqrt(mean over channels of (mean difference)^2 + (std difference)^2). Raises PreviewError
    when the channel counts differ."""
    if profile.mean.shape != reference.mean.shape:
        raise PreviewError(f"latent profiles of {profile.mean.shape[0]} and {reference.mean.shape[0]} channels cannot "
                           "be compared")
    return float(np.sqrt(np.mean(np.square(profile.mean - reference.mean) + np.square(profile.std - reference.std))))


def songs_distances(latents: Mapping[float, np.ndarray], songs: LatentProfile) -> dict[str, float]:
    """{strength label: latent distance to the songs' profile} of each strength's render latents
    `[frames, channels]`."""
    return {strength_label(strength): round(profile_distance(latent_profile([array]), songs), 4)
            for strength, array in latents.items()}


def recorded_distances(record: Mapping | None) -> dict[str, float]:
    """The latent distances to the songs a `preview.json` record holds (its
    `songs_distance`), or {} when it holds none or something else."""
    return _numbers((record or {}).get("songs_distance"))


def closer_share(distances: Mapping[str, float], label: str) -> float | None:
    """How much closer to the songs the render at strength `label` is than the one at strength 0,
    as a share of strength 0's distance (0.15: 15% closer; negative: farther), or None when either
    is missing (or strength 0's distance is 0)."""
    base, distance = distances.get("0"), distances.get(label)
    return 1.0 - distance / base if base and distance is not None else None


def closer_text(share: float) -> str:
    """0.15 -> "15% closer", -0.2 -> "20% farther"."""
    return f"{abs(share):.0%} {'closer' if share >= 0 else 'farther'}"


def distance_summary(distances: Mapping[str, float]) -> str:
    """"strength 0: 1.134, strength 1: 0.915 (19% closer than the base model)", or "" without
    distances. The share is said when strength 0 is among them, for the largest strength."""
    if not distances:
        return ""
    text = ", ".join(f"strength {label}: {value:.3f}" for label, value in distances.items())
    others = [label for label in distances if label != "0"]
    top = max(others, key=float) if others else None
    share = closer_share(distances, top) if top is not None else None
    if share is not None:
        text += f" ({closer_text(share)}" + (f" at strength {top}" if len(others) > 1 else "") + " than the base model)"
    return text
