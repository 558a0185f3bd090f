"""acestep.audio.analysis against the numbers of ITU-R BS.1770-4 and EBU Tech 3341, against
ffmpeg's independent ebur128 meter on real music, and on hand-built signals with known levels."""

import hashlib
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from acestep.audio import audio_stats, file_content_hash, integrated_loudness, load_audio
from acestep.audio.analysis import biquad_filter, k_weight, k_weighting_coefficients
from acestep.errors import AudioError

RATE = 48_000


def _sine(dbfs: float, seconds: float, hz: float = 1000.0, rate: int = RATE) -> np.ndarray:
    return 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)


def _stereo(*segments: np.ndarray) -> np.ndarray:
    signal = np.concatenate(segments)
    return np.stack([signal, signal])


# ---------------------------------------------------------------------------------------------
# K-weighting


def test_48k_coefficients_are_the_ones_tabulated_in_bs1770():
    (shelf_b, shelf_a), (highpass_b, highpass_a) = k_weighting_coefficients(48_000)
    # ITU-R BS.1770-4, Annex 1, tables 1 and 2.
    np.testing.assert_allclose(shelf_b, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-12)
    np.testing.assert_allclose(shelf_a, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-12)
    np.testing.assert_allclose(highpass_b, [1.0, -2.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(highpass_a, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-12)


@pytest.mark.parametrize("rate", [44_100, 48_000, 96_000])
def test_fft_k_weighting_equals_the_recursive_filters(rate):
    noise = np.random.default_rng(rate).standard_normal(30_000) * 0.3
    (shelf_b, shelf_a), (highpass_b, highpass_a) = k_weighting_coefficients(rate)
    recursive = biquad_filter(biquad_filter(noise, shelf_b, shelf_a), highpass_b, highpass_a)
    np.testing.assert_allclose(k_weight(noise, rate), recursive, rtol=0, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# integrated loudness: reference values


def test_997_hz_full_scale_sine_reads_as_bs1770_says():
    tone = _sine(0.0, 10.0, hz=997.0)
    # BS.1770-4: a 0 dBFS 997 Hz sine in one front channel reads -3.01 LKFS.
    assert integrated_loudness(np.stack([tone, np.zeros_like(tone)]), RATE) == pytest.approx(-3.01, abs=0.01)
    assert integrated_loudness(tone, RATE) == pytest.approx(-3.01, abs=0.01)  # mono: one channel
    # The same sine in both channels adds the powers: +3.01 dB, i.e. 0.00 LUFS.
    assert integrated_loudness(np.stack([tone, tone]), RATE) == pytest.approx(0.0, abs=0.01)
    # A level change is a loudness change, dB for LU.
    assert integrated_loudness(np.stack([tone, tone]) * 0.1, RATE) == pytest.approx(-20.0, abs=0.01)


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ([(-23.0, 20.0)], -23.0),  # case 1: 1 kHz stereo sine at -23 dBFS
        ([(-33.0, 20.0)], -33.0),  # case 2: the same at -33 dBFS
        ([(-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0)], -23.0),  # case 3: relative gate drops the -36 parts
        ([(-72.0, 10.0), (-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0), (-72.0, 10.0)], -23.0),  # case 4: both gates
    ],
    ids=["case1", "case2", "case3", "case4"],
)
def test_ebu_tech_3341_integrated_loudness_cases(segments, expected):
    signal = _stereo(*(_sine(level, seconds) for level, seconds in segments))
    assert integrated_loudness(signal, RATE) == pytest.approx(expected, abs=0.1)


def test_silence_around_a_tone_is_gated_out():
    tone = _stereo(_sine(-20.0, 20.0))
    silence = np.zeros((2, 10 * RATE))
    alone = integrated_loudness(tone, RATE)
    padded = integrated_loudness(np.concatenate([silence, tone, silence], axis=1), RATE)
    assert padded == pytest.approx(alone, abs=0.1)  # ungated, 20 s of silence would cost 3 dB
    # What is left is exact: the 6 blocks straddling each edge hold 3/4, 1/2 and 1/4 of the tone,
    # are within 10 LU of it, so they pass the relative gate: mean power 200 / 203 of the tone's.
    assert padded - alone == pytest.approx(10 * np.log10(200 / 203), abs=0.002)


def test_relative_gate_ignores_a_quiet_passage():
    loud, quiet = _sine(-20.0, 20.0), _sine(-45.0, 20.0)
    assert integrated_loudness(_stereo(loud, quiet), RATE) == pytest.approx(
        integrated_loudness(_stereo(loud), RATE), abs=0.05
    )


def test_no_loudness_for_silence_short_clips_and_sub_gate_signals():
    assert integrated_loudness(np.zeros((2, 5 * RATE)), RATE) == float("-inf")
    assert integrated_loudness(_stereo(_sine(-3.0, 0.399)), RATE) == float("-inf")  # no whole 400 ms block
    assert integrated_loudness(_stereo(_sine(-3.0, 0.4)), RATE) == pytest.approx(-3.0, abs=0.05)
    assert integrated_loudness(_stereo(_sine(-80.0, 5.0)), RATE) == float("-inf")  # under the -70 LUFS gate
    assert integrated_loudness(np.zeros((2, 0)), RATE) == float("-inf")


def test_channels_last_arrays_are_refused():
    with pytest.raises(ValueError, match=r"\[channels, samples\].*transpose"):
        integrated_loudness(np.zeros((RATE, 2)), RATE)
    with pytest.raises(ValueError, match="1 or 2 channels"):
        audio_stats(np.zeros((6, RATE)), RATE)


# ---------------------------------------------------------------------------------------------
# integrated loudness on real music, against ffmpeg's ebur128 filter (an independent implementation)


def _ffmpeg_loudness(path) -> float:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed; install it: sudo apt-get install -y ffmpeg")
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-i", str(path), "-af", "ebur128", "-f", "null", "-"]
    log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", log)[-1])  # the summary, one decimal


def test_real_music_matches_ffmpeg_ebur128(real_songs, real_loops):
    for path in (*real_songs, real_loops["loop_tabla"], real_loops["loop_amen_full"]):
        samples, rate = sf.read(path, always_2d=True)  # at the file's own rate: 48 kHz and 44.1 kHz
        ours = integrated_loudness(samples.T, rate)
        assert ours == pytest.approx(_ffmpeg_loudness(path), abs=0.06), path.name  # 0.05 rounding + margin


# ---------------------------------------------------------------------------------------------
# audio_stats


def test_stats_of_a_full_scale_sine():
    tone = _stereo(_sine(0.0, 2.0, hz=997.0))
    stats = audio_stats(tone, RATE)
    assert stats.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert stats.rms_dbfs == pytest.approx(-3.01, abs=0.01)
    assert stats.loudness_lufs == pytest.approx(0.0, abs=0.02)
    assert stats.duration == 2.0
    assert not stats.silent
    # Only the crests reach 0.999: |sin| >= 0.999 over 2 * acos(0.999) / pi of the time.
    assert stats.clipped_fraction == pytest.approx(2 * np.arccos(0.999) / np.pi, rel=0.02)


def test_stats_count_clipped_samples_and_silence():
    audio = np.full((2, 1000), 0.5, np.float32)
    audio[0, :200] = 1.0
    audio[1, :50] = -0.9995
    stats = audio_stats(audio, RATE)
    assert stats.clipped_fraction == 250 / 2000
    assert stats.peak_dbfs == 0.0

    quiet = audio_stats(np.full((2, RATE), 10 ** (-61 / 20)), RATE)
    assert quiet.silent and quiet.peak_dbfs == pytest.approx(-61.0)
    assert not audio_stats(np.full((2, RATE), 10 ** (-59 / 20)), RATE).silent

    zeros = audio_stats(np.zeros((2, RATE)), RATE)
    assert zeros.silent and zeros.peak_dbfs == zeros.rms_dbfs == zeros.loudness_lufs == float("-inf")
    empty = audio_stats(np.zeros((2, 0)), RATE)
    assert (empty.duration, empty.clipped_fraction, empty.silent) == (0.0, 0.0, True)


def test_stats_of_real_recordings(real_songs, real_loops):
    audio = load_audio(real_songs[1])
    song = audio_stats(audio, RATE)
    assert song.duration == 12.0 and not song.silent and song.clipped_fraction == 0.0
    assert song.peak_dbfs == pytest.approx(20 * np.log10(np.abs(audio).max()), abs=1e-6)  # -14.9 dBFS
    assert song.rms_dbfs == pytest.approx(10 * np.log10(np.mean(audio.astype(np.float64) ** 2)), abs=1e-6)
    assert song.loudness_lufs == integrated_loudness(audio, RATE)  # a quiet render: -31.3 LUFS

    amen = audio_stats(load_audio(real_loops["loop_amen_full"]), RATE)  # a famously hot, clipped break
    assert amen.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert 0.001 < amen.clipped_fraction < 0.05


# ---------------------------------------------------------------------------------------------
# content hash


def test_content_hash_is_sha256_of_the_bytes(real_songs, tmp_path):
    song = real_songs[1]  # 2.3 MB: read in several 1 MB chunks
    assert song.stat().st_size > 2 * 2**20
    assert file_content_hash(song) == hashlib.sha256(song.read_bytes()).hexdigest()

    copy = shutil.copy(song, tmp_path / "renamed copy.wav")
    assert file_content_hash(copy) == file_content_hash(song)
    changed = bytearray(song.read_bytes())
    changed[-1] ^= 1
    (tmp_path / "changed.wav").write_bytes(changed)
    assert file_content_hash(tmp_path / "changed.wav") != file_content_hash(song)
    (tmp_path / "empty.wav").touch()
    assert file_content_hash(tmp_path / "empty.wav") == hashlib.sha256(b"").hexdigest()

    with pytest.raises(AudioError, match="file not found") as caught:
        file_content_hash(tmp_path / "gone.wav")
    assert caught.value.path == tmp_path / "gone.wav"
