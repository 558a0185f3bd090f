"""The adapter effect (`acestep/inference/effect.py`): the mean log-mel difference of two renders."""

import numpy as np
import pytest

from acestep.inference import PreviewError
from acestep.inference.effect import (
    adapter_effects,
    distance_summary,
    effect_summary,
    latent_profile,
    profile_distance,
    recorded_distances,
    recorded_effects,
    songs_distances,
    spectral_difference_db,
)
from acestep.inference.render import SAMPLE_RATE, TOP_DB


def noise(seconds=0.5, seed=0, channels=2):
    return np.random.default_rng(seed).standard_normal((channels, int(seconds * SAMPLE_RATE))) * 0.1


def test_a_render_at_half_the_amplitude_differs_by_6_db_in_every_band():
    audio = noise()
    assert spectral_difference_db(audio, audio) == 0.0
    assert spectral_difference_db(audio * 0.5, audio) == pytest.approx(20 * np.log10(2), abs=1e-9)
    assert spectral_difference_db(audio, audio * 0.5) == spectral_difference_db(audio * 0.5, audio)


def test_differences_below_the_floor_do_not_count():
    loud = noise(1.0)
    loud[:, SAMPLE_RATE // 2:] = 0.0  # a loud half second, then silence
    hiss = loud.copy()
    hiss[:, SAMPLE_RATE // 2:] = noise(0.5, seed=1) * 10 ** (-95 / 20)  # 95 dB under the loud part
    assert spectral_difference_db(hiss, loud) < 0.05  # unfloored, the silent half would add 8 dB
    # noise against silence: no band differs by more than the floor's depth
    assert 60.0 < spectral_difference_db(noise(0.5, seed=1), np.zeros((2, SAMPLE_RATE // 2))) <= TOP_DB


def test_different_sounds_differ_and_lengths_must_match():
    a, b = noise(seed=1), noise(seed=2)
    assert 1.0 < spectral_difference_db(a, b) < 20.0  # two noises: only their fine structure differs
    tone = np.sin(2 * np.pi * 440 * np.arange(a.shape[1]) / SAMPLE_RATE)[None].repeat(2, 0) * 0.5
    assert spectral_difference_db(tone, a) > 20.0  # a tone against noise: most bands far apart
    with pytest.raises(PreviewError, match="different lengths .*24000 and 23999 samples"):
        spectral_difference_db(a, a[:, :-1])


def test_effects_are_measured_against_strength_0_and_read_back_from_records():
    base = noise()
    renders = {0.0: base, 0.5: base * 0.5, 1.0: base * 0.25}
    assert adapter_effects(renders) == {"0.5": 6.021, "1": 12.041}
    assert adapter_effects({0.5: base, 1.0: base}) == {}  # nothing to measure against
    assert effect_summary({"0.5": 6.021, "1": 12.041}) == ("strength 0.5: 6.02 dB, strength 1: 12.04 dB from the "
                                                           "base model")
    assert effect_summary({}) == ""
    assert recorded_effects({"effect_db": {"1": 4, "0.5": 1.25}}) == {"1": 4.0, "0.5": 1.25}
    for record in (None, {}, {"effect_db": None}, {"effect_db": [1.0]}, {"effect_db": {"1": "loud"}},
                   {"effect_db": {"1": True}}):
        assert recorded_effects(record) == {}


def test_a_latent_profile_sums_up_its_arrays_as_one_and_distances_are_frechet_per_channel():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 8)) * 2 + 1 for n in (5, 17, 40)]
    whole = np.concatenate(parts)
    profile = latent_profile(iter(parts))  # streamed: one array at a time
    assert profile.frames == 62
    np.testing.assert_allclose(profile.mean, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(profile.std, whole.std(axis=0), rtol=1e-12)
    assert profile_distance(profile, profile) == 0.0
    shifted = latent_profile([whole + 3.0])  # every channel's mean moves by 3, the spread stays
    assert profile_distance(shifted, profile) == pytest.approx(3.0, rel=1e-12)
    spread = latent_profile([(whole - profile.mean) * 2 + profile.mean])  # every spread doubles
    assert profile_distance(spread, profile) == pytest.approx(np.sqrt(np.mean(profile.std ** 2)), rel=1e-12)
    songs = latent_profile([np.zeros((4, 8)) + 1.0])
    assert songs_distances({0.0: np.zeros((3, 8)), 1.0: np.full((3, 8), 0.75)}, songs) == {"0": 1.0, "1": 0.25}
    with pytest.raises(PreviewError, match="one channel count"):
        latent_profile([np.zeros((3, 8)), np.zeros((3, 4))])
    with pytest.raises(PreviewError, match="no latent frames"):
        latent_profile([])
    with pytest.raises(PreviewError, match="profiles of 4 and 8 channels"):
        profile_distance(latent_profile([np.zeros((3, 4))]), profile)


def test_distances_are_said_with_the_share_closer_than_the_base_model():
    assert distance_summary({"0": 1.2, "1": 0.9}) == ("strength 0: 1.200, strength 1: 0.900 (25% closer than the base "
                                                      "model)")
    assert distance_summary({"0": 1.0, "0.5": 0.9, "1": 1.1}) == (
        "strength 0: 1.000, strength 0.5: 0.900, strength 1: 1.100 (10% farther at strength 1 than the base model)")
    assert distance_summary({"1": 0.9}) == "strength 1: 0.900" and distance_summary({}) == ""
    assert recorded_distances({"songs_distance": {"0": 1, "1": 0.5}}) == {"0": 1.0, "1": 0.5}
    assert recorded_distances({"songs_distance": "far"}) == {} and recorded_distances(None) == {}


def test_the_scale_the_guide_gives_on_recorded_loops(sonic_pi_drum_loops):
    """TRAINING_GUIDE.md (Listen while it trains) quotes these figures to give the dB a scale:
    renders are peak-normalised, so every sound here is too."""
    import itertools

    import torch

    from acestep.audio.io import load_audio
    from acestep.inference.preview import normalize_peak

    frames = 4 * SAMPLE_RATE

    def peak(audio):
        return normalize_peak(torch.tensor(np.asarray(audio), dtype=torch.float32)).numpy()

    def filtered(audio, gain):  # an FFT filter: gain(frequencies in Hz) -> amplitude
        spectrum = np.fft.rfft(audio, axis=1) * gain(np.fft.rfftfreq(audio.shape[1], 1 / SAMPLE_RATE))
        return peak(np.fft.irfft(spectrum, n=audio.shape[1], axis=1))

    loops = []
    for path in sonic_pi_drum_loops:  # 4 s of each, repeated when shorter
        audio = load_audio(path)
        loops.append(peak(np.tile(audio, int(np.ceil(frames / audio.shape[1])))[:, :frames]))
    assert len(loops) >= 10
    apart = [spectral_difference_db(a, b) for a, b in itertools.combinations(loops, 2)]
    assert 16.0 < np.median(apart) < 20.0 and min(apart) > 6.0  # 18.2 (9.0 to 30.8) on the 17 loops
    low_passed = [spectral_difference_db(filtered(x, lambda f: 1 / np.sqrt(1 + (f / 4000) ** 4)), x) for x in loops]
    assert 4.5 < np.median(low_passed) < 6.5  # 5.4: a 4 kHz low-pass
    late = [spectral_difference_db(peak(np.roll(x, SAMPLE_RATE // 20, axis=1)), x) for x in loops]
    assert 7.0 < np.median(late) < 9.0  # 8.1: the same loop 50 ms later
