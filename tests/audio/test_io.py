"""acestep.audio.io on real music (rendered openmsx songs, sonic-pi recordings) and on a corpus
of broken files: decoding of every format, resampling, channels, errors, normalisation and WAV
writing."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from acestep.audio import (
    AUDIO_EXTENSIONS,
    NORMALIZATION_MODES,
    SAMPLE_RATE,
    LoudnessError,
    audio_stats,
    integrated_loudness,
    load_audio,
    normalize_loudness,
    probe_audio,
    write_wav,
)
from acestep.errors import AceStepError, AudioError

from .media import encode_as, reference_samples

LOSSY_TOLERANCE_FRAMES = int(0.060 * SAMPLE_RATE)  # encoder delay/padding a lossy codec may add
LOSSLESS = (".wav", ".flac")
# ---------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("extension", AUDIO_EXTENSIONS)
def test_every_format_decodes_to_48k_stereo_float32(real_songs, tmp_path, extension):
    source = real_songs[0]  # 6 s of rendered music, 48 kHz stereo
    reference = reference_samples(source)
    encoded = encode_as(source, tmp_path / f"clip{extension}")

    audio = load_audio(encoded)

    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[0] == 2
    assert audio.flags.c_contiguous
    assert np.abs(audio).max() <= 1.0
    frames = audio.shape[1]
    if extension in LOSSLESS:
        assert frames == reference.shape[1] == 6 * SAMPLE_RATE
        np.testing.assert_array_equal(audio, reference)  # 16-bit PCM scaled by 1/32768, bit for bit
    else:
        assert abs(frames - reference.shape[1]) <= LOSSY_TOLERANCE_FRAMES
        overlap = min(frames, reference.shape[1])
        correlation = np.corrcoef(audio[:, :overlap].ravel(), reference[:, :overlap].ravel())[0, 1]
        assert correlation > 0.98, f"{extension} decodes to something else (correlation {correlation:.3f})"

    info = probe_audio(encoded)
    assert (info.sample_rate, info.channels) == (SAMPLE_RATE, 2)
    assert info.path == encoded
    assert abs(info.frames - reference.shape[1]) <= LOSSY_TOLERANCE_FRAMES
    assert info.duration == pytest.approx(info.frames / info.sample_rate)


def test_extension_matching_is_case_insensitive(real_songs, tmp_path):
    upper = tmp_path / "CLIP.FLAC"
    encode_as(real_songs[0], tmp_path / "clip.flac").rename(upper)
    np.testing.assert_array_equal(load_audio(upper), reference_samples(real_songs[0]))


def test_resampling_441_to_48k_keeps_duration_within_one_sample(real_loops):
    for name in ("loop_tabla", "drum_roll"):  # stereo and mono recordings at 44.1 kHz
        info = probe_audio(real_loops[name])
        assert info.sample_rate == 44_100
        audio = load_audio(real_loops[name])
        expected = round(info.frames * SAMPLE_RATE / 44_100)
        assert abs(audio.shape[1] - expected) <= 1, (name, info.frames, audio.shape[1], expected)
        # The resampled music keeps its loudness (BS.1770 measured at each rate; mono as two channels).
        original = np.broadcast_to(reference_samples(real_loops[name]), (2, info.frames))
        assert integrated_loudness(audio, SAMPLE_RATE) == pytest.approx(
            integrated_loudness(original, 44_100), abs=0.05
        )


def test_resampling_is_high_quality(tmp_path):
    rate = 44_100
    tone = 0.5 * np.sin(2 * np.pi * 10_000.0 * np.arange(2 * rate) / rate)
    sf.write(tmp_path / "tone.wav", tone, rate, subtype="FLOAT")
    audio = load_audio(tmp_path / "tone.wav")
    spectrum = np.abs(np.fft.rfft(audio[0]))
    assert np.fft.rfftfreq(audio.shape[1], 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(10_000.0, abs=0.5)
    # Against the ideal 48 kHz sine (edges aside): soxr HQ is at -135 dB; MQ would be -80, LQ -112.
    ideal = 0.5 * np.sin(2 * np.pi * 10_000.0 * np.arange(audio.shape[1]) / SAMPLE_RATE)
    error = (audio[0] - ideal)[4800:-4800]
    assert 10 * np.log10(np.mean(error**2) / np.mean(ideal[4800:-4800] ** 2)) < -120.0


def test_mono_becomes_two_identical_channels(real_loops):
    assert probe_audio(real_loops["drum_roll"]).channels == 1
    audio = load_audio(real_loops["drum_roll"])
    assert audio.shape[0] == 2
    np.testing.assert_array_equal(audio[0], audio[1])
    assert np.abs(audio[0]).max() > 0.5  # the recording, not zeros


def test_eight_channels_keep_the_first_two(tmp_path):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    channels = np.stack([0.1 * (k + 1) * np.sin(2 * np.pi * 110 * (k + 1) * t) for k in range(8)], axis=1)
    sf.write(tmp_path / "octo.wav", channels.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    assert probe_audio(tmp_path / "octo.wav").channels == 8
    audio = load_audio(tmp_path / "octo.wav")
    assert audio.shape == (2, SAMPLE_RATE)
    np.testing.assert_array_equal(audio, channels[:, :2].T.astype(np.float32))

    channels[:, :2] = 0.0  # sound only in the channels that are dropped: silent as loaded
    sf.write(tmp_path / "rear.wav", channels.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="is silent"):
        load_audio(tmp_path / "rear.wav")


def test_integer_pcm_is_scaled_and_float_overs_are_clipped(tmp_path):
    pcm = np.zeros((SAMPLE_RATE, 2), dtype=np.int16)
    pcm[:, 0], pcm[:, 1] = 16384, -32768
    sf.write(tmp_path / "pcm.wav", pcm, SAMPLE_RATE, subtype="PCM_16")
    audio = load_audio(tmp_path / "pcm.wav")
    assert set(np.unique(audio[0])) == {0.5} and set(np.unique(audio[1])) == {-1.0}

    overs = np.full((SAMPLE_RATE, 2), 1.5, dtype=np.float32)
    overs[:, 1] = -0.25
    sf.write(tmp_path / "overs.wav", overs, SAMPLE_RATE, subtype="FLOAT")
    audio = load_audio(tmp_path / "overs.wav")
    assert audio[0].max() == 1.0 and audio[0].min() == 1.0
    assert np.all(audio[1] == np.float32(-0.25))


def test_max_seconds_keeps_the_start(real_songs, real_loops):
    full = load_audio(real_songs[1])
    start = load_audio(real_songs[1], max_seconds=5.0)
    assert start.shape == (2, 5 * SAMPLE_RATE)
    np.testing.assert_array_equal(start, full[:, : 5 * SAMPLE_RATE])

    full = load_audio(real_loops["loop_tabla"])  # 44.1 kHz: the cut happens before resampling
    start = load_audio(real_loops["loop_tabla"], max_seconds=2.5)
    assert start.shape == (2, 120_000)
    assert np.abs(start - full[:, :120_000]).max() < 1e-4


def test_other_target_rates(real_songs):
    audio = load_audio(real_songs[0], sample_rate=44_100)
    assert audio.shape == (2, 6 * 44_100)


# ---------------------------------------------------------------------------------------------
# broken input: each file gets its own reason


def _truncated_mp3(tmp_path, real_songs):
    mp3 = encode_as(real_songs[0], tmp_path / "whole.mp3")
    broken = tmp_path / "truncated.mp3"
    broken.write_bytes(mp3.read_bytes()[:200])
    return broken


def _zero_bytes(tmp_path, real_songs):
    (tmp_path / "empty.wav").touch()
    return tmp_path / "empty.wav"


def _text_named_wav(tmp_path, real_songs):
    (tmp_path / "lyrics.wav").write_text("[verse]\nla la la, this is a lyrics file\n", encoding="utf-8")
    return tmp_path / "lyrics.wav"


def _binary_junk(tmp_path, real_songs):
    (tmp_path / "junk.flac").write_bytes(bytes(range(256)) * 64)
    return tmp_path / "junk.flac"


def _zero_length(tmp_path, real_songs):
    sf.write(tmp_path / "nothing.wav", np.zeros((0, 2)), SAMPLE_RATE, subtype="PCM_16")
    return tmp_path / "nothing.wav"


def _one_sample(tmp_path, real_songs):
    sf.write(tmp_path / "one.wav", np.array([[0.5, 0.5]]), SAMPLE_RATE, subtype="PCM_16")
    return tmp_path / "one.wav"


def _all_zeros(tmp_path, real_songs):
    sf.write(tmp_path / "zeros.flac", np.zeros((2 * SAMPLE_RATE, 2)), SAMPLE_RATE)
    return tmp_path / "zeros.flac"


def _very_quiet(tmp_path, real_songs):
    music = reference_samples(real_songs[0])
    quiet = music / np.abs(music).max() * 10 ** (-70 / 20)  # real music, peak at -70 dBFS
    sf.write(tmp_path / "quiet.wav", quiet.T, SAMPLE_RATE, subtype="FLOAT")
    return tmp_path / "quiet.wav"


def _missing(tmp_path, real_songs):
    return tmp_path / "not_there.mp3"


def _unsupported(tmp_path, real_songs):
    target = tmp_path / "clip.xyz"
    shutil.copy(real_songs[0], target)  # real WAV data: the extension alone is refused
    return target


def _folder(tmp_path, real_songs):
    (tmp_path / "album.wav").mkdir()
    return tmp_path / "album.wav"


BAD_INPUTS = [
    (_truncated_mp3, "corrupt, truncated, or not audio"),
    (_zero_bytes, "file is empty (0 bytes)"),
    (_text_named_wav, "is a text file, not audio"),
    (_binary_junk, "corrupt, truncated, or not audio"),
    (_zero_length, "contains no audio samples (zero length)"),
    (_one_sample, "is too short: 1 sample"),
    (_all_zeros, "is silent: its peak is -inf dBFS"),
    (_very_quiet, "is silent: its peak is -70.0 dBFS, below -60 dBFS"),
    (_missing, "file not found"),
    (_unsupported, "unsupported file type '.xyz'"),
    (_folder, "is a folder, not an audio file"),
]


@pytest.mark.parametrize(("make", "reason"), BAD_INPUTS, ids=[make.__name__[1:] for make, _ in BAD_INPUTS])
def test_bad_input_gets_its_own_reason(make, reason, tmp_path, real_songs):
    path = make(tmp_path, real_songs)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert reason in caught.value.reason
    assert caught.value.path == path
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("make", [_all_zeros, _very_quiet])
def test_silent_files_load_when_asked(make, tmp_path, real_songs):
    audio = load_audio(make(tmp_path, real_songs), reject_silent=False)
    assert audio.shape[0] == 2 and audio.shape[1] >= 2 * SAMPLE_RATE
    assert audio_stats(audio, SAMPLE_RATE).silent


def test_probe_reports_the_same_header_problems(tmp_path, real_songs):
    cases = [(_truncated_mp3, "corrupt"), (_zero_bytes, "0 bytes"), (_text_named_wav, "text file"),
             (_zero_length, "zero length"), (_missing, "not found"), (_unsupported, "unsupported")]  # fmt: skip
    for make, reason in cases:
        with pytest.raises(AudioError, match=reason):
            probe_audio(make(tmp_path, real_songs))


def test_missing_ffmpeg_is_named_with_the_fix(tmp_path, real_songs, monkeypatch):
    m4a = encode_as(real_songs[0], tmp_path / "clip.m4a")
    junk_wav = _binary_junk(tmp_path, real_songs).rename(tmp_path / "junk.wav")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(AudioError) as caught:
        load_audio(m4a)
    assert "needs ffmpeg, which was not found" in caught.value.reason
    assert "apt-get install ffmpeg" in caught.value.reason
    with pytest.raises(AudioError, match="needs ffmpeg"):
        probe_audio(m4a)
    # A WAV libsndfile cannot read is still reported as corrupt, noting ffmpeg could not be tried.
    with pytest.raises(AudioError) as caught:
        load_audio(junk_wav)
    assert "corrupt" in caught.value.reason
    assert "ffmpeg, which reads more variants, is not installed" in caught.value.reason


def test_bad_arguments_are_value_errors(real_songs):
    with pytest.raises(ValueError, match="positive"):
        load_audio(real_songs[0], max_seconds=0)
    with pytest.raises(ValueError, match="positive"):
        load_audio(real_songs[0], sample_rate=0)


# ---------------------------------------------------------------------------------------------
# loudness normalisation


def _peak_dbfs(audio: np.ndarray) -> float:
    return 20 * np.log10(np.abs(audio).max())


def test_peak_mode_puts_the_peak_at_minus_one_dbfs(real_songs, real_loops):
    for path in (real_songs[0], real_loops["loop_tabla"], real_loops["loop_amen_full"]):
        audio = load_audio(path)
        normalized = normalize_loudness(audio, SAMPLE_RATE, "peak")
        assert normalized.dtype == np.float32 and normalized.shape == audio.shape
        assert _peak_dbfs(normalized) == pytest.approx(-1.0, abs=0.01)
        gain = normalized / np.where(audio == 0, 1, audio)
        assert np.ptp(gain[np.abs(audio) > 1e-3]) < 1e-4  # one gain for every sample: no compression


def test_lufs_mode_reaches_minus_14_lufs(real_songs):
    audio = load_audio(real_songs[0])  # -21.2 LUFS, peak -8.5 dBFS: +7.2 dB leaves the peak under 0 dBFS
    assert integrated_loudness(audio, SAMPLE_RATE) == pytest.approx(-21.2, abs=0.1)
    for mode in ("lufs", "peak_lufs"):
        normalized = normalize_loudness(audio, SAMPLE_RATE, mode)
        assert integrated_loudness(normalized, SAMPLE_RATE) == pytest.approx(-14.0, abs=0.1)
        assert _peak_dbfs(normalized) < -1.0


def test_lufs_modes_never_clip_a_quiet_spiky_recording(real_loops):
    audio = load_audio(real_loops["loop_tabla"])  # -26.6 LUFS with peaks at -9.8 dBFS: +12.6 dB would clip
    before = integrated_loudness(audio, SAMPLE_RATE)
    lufs = normalize_loudness(audio, SAMPLE_RATE, "lufs")
    assert np.abs(lufs).max() == pytest.approx(1.0, abs=1e-6)  # limited at full scale
    assert audio_stats(lufs, SAMPLE_RATE).clipped_fraction < 1e-4
    expected = before + (0.0 - _peak_dbfs(audio))  # the gain that puts the peak at 0 dBFS
    assert integrated_loudness(lufs, SAMPLE_RATE) == pytest.approx(expected, abs=0.01)
    assert integrated_loudness(lufs, SAMPLE_RATE) < -14.0

    peak_lufs = normalize_loudness(audio, SAMPLE_RATE, "peak_lufs")
    assert _peak_dbfs(peak_lufs) == pytest.approx(-1.0, abs=0.01)
    assert integrated_loudness(peak_lufs, SAMPLE_RATE) == pytest.approx(expected - 1.0, abs=0.01)


def test_lufs_mode_turns_a_loud_recording_down(real_loops):
    audio = load_audio(real_loops["loop_amen_full"])  # -7.7 LUFS, already touching full scale
    normalized = normalize_loudness(audio, SAMPLE_RATE, "lufs")
    assert integrated_loudness(normalized, SAMPLE_RATE) == pytest.approx(-14.0, abs=0.1)
    assert _peak_dbfs(normalized) == pytest.approx(-14.0 - integrated_loudness(audio, SAMPLE_RATE), abs=0.05)


def test_none_mode_and_bad_modes(real_songs):
    audio = load_audio(real_songs[0])
    assert normalize_loudness(audio, SAMPLE_RATE, "none") is audio
    with pytest.raises(ValueError) as caught:
        normalize_loudness(audio, SAMPLE_RATE, "loud")
    assert all(mode in str(caught.value) for mode in NORMALIZATION_MODES)
    assert type(caught.value) is ValueError  # a settings mistake, not a per-file problem
    # Data problems are LoudnessErrors: ValueErrors that batch jobs catch as AceStepErrors, per file.
    with pytest.raises(LoudnessError, match="silent"):
        normalize_loudness(np.zeros((2, SAMPLE_RATE), np.float32), SAMPLE_RATE, "peak")
    with pytest.raises(LoudnessError, match="no measurable loudness.*'peak'") as caught:
        normalize_loudness(audio[:, : SAMPLE_RATE // 4], SAMPLE_RATE, "lufs")  # 250 ms: no 400 ms block
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, AceStepError)


# ---------------------------------------------------------------------------------------------
# writing


def test_write_wav_is_24_bit_and_atomic(tmp_path, real_songs):
    audio = load_audio(real_songs[0])
    target = tmp_path / "new" / "folder" / "out.wav"
    assert write_wav(target, audio) == target
    info = sf.info(target)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SAMPLE_RATE, 2, "PCM_24", audio.shape[1])
    np.testing.assert_allclose(reference_samples(target), audio, atol=2**-23)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.wav"]  # no temporary left

    target.write_bytes(b"old")
    write_wav(target, audio[:, :SAMPLE_RATE], 44_100)  # replaces the old file
    assert sf.info(target).frames == SAMPLE_RATE and sf.info(target).samplerate == 44_100


def test_write_wav_refuses_nan_and_writes_nothing(tmp_path):
    audio = np.zeros((2, 100), np.float32)
    audio[0, 50] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "nan.wav", audio)
    assert list(tmp_path.iterdir()) == []
