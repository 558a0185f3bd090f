"""The adapter effect (`acestep/inference/effect.py`): the mean log-mel difference of two renders."""

import numpy as np
import pytest

from acestep.inference import PreviewError
from acestep.inference.effect import adapter_effects, effect_summary, recorded_effects, spectral_difference_db
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
