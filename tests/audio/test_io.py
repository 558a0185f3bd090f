"""acestep.audio.io on real music (rendered openmsx songs, sonic-pi recordings) and on a corpus
of broken files: decoding of every format, resampling, channels, errors, normalisation, WAV
writing and splitting."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep.audio import (
    AUDIO_EXTENSIONS,
    NORMALIZATION_MODES,
    SAMPLE_RATE,
    FileFailure,
    LoudnessError,
    audio_stats,
    file_content_hash,
    integrated_loudness,
    load_audio,
    normalize_loudness,
    probe_audio,
    split_audio_file,
    split_folder,
    write_wav,
)
from acestep.errors import AceStepError, AudioError

LOSSY_TOLERANCE_FRAMES = int(0.060 * SAMPLE_RATE)  # encoder delay/padding a lossy codec may add
LOSSLESS = (".wav", ".flac")
FFMPEG_ENCODERS = {".mp3": ["-c:a", "libmp3lame", "-b:a", "192k"], ".opus": ["-c:a", "libopus", "-b:a", "128k"],
                   ".m4a": ["-c:a", "aac", "-b:a", "192k"]}  # fmt: skip


def _need_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg is not installed; install it: sudo apt-get install -y ffmpeg")


def _encode(source: Path, target: Path) -> Path:
    """`source` (a WAV) re-encoded as `target`'s format: soundfile for wav/flac/ogg, ffmpeg else."""
    if target.suffix in FFMPEG_ENCODERS:
        _need_ffmpeg()
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *FFMPEG_ENCODERS[target.suffix]]
        subprocess.run([*command, str(target)], check=True, capture_output=True)
    else:
        samples, rate = sf.read(source, dtype="int16", always_2d=True)
        sf.write(target, samples, rate, **({"subtype": "PCM_16"} if target.suffix == ".wav" else {}))
    return target


def _reference(path: Path) -> np.ndarray:
    """[channels, frames] float32 of a file read directly by soundfile (no resampling)."""
    samples, _ = sf.read(path, dtype="float32", always_2d=True)
    return samples.T


# ---------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("extension", AUDIO_EXTENSIONS)
def test_every_format_decodes_to_48k_stereo_float32(real_songs, tmp_path, extension):
    source = real_songs[0]  # 6 s of rendered music, 48 kHz stereo
    reference = _reference(source)
    encoded = _encode(source, tmp_path / f"clip{extension}")

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
    _encode(real_songs[0], tmp_path / "clip.flac").rename(upper)
    np.testing.assert_array_equal(load_audio(upper), _reference(real_songs[0]))


def test_resampling_441_to_48k_keeps_duration_within_one_sample(real_loops):
    for name in ("loop_tabla", "drum_roll"):  # stereo and mono recordings at 44.1 kHz
        info = probe_audio(real_loops[name])
        assert info.sample_rate == 44_100
        audio = load_audio(real_loops[name])
        expected = round(info.frames * SAMPLE_RATE / 44_100)
        assert abs(audio.shape[1] - expected) <= 1, (name, info.frames, audio.shape[1], expected)
        # The resampled music keeps its loudness (BS.1770 measured at each rate; mono as two channels).
        original = np.broadcast_to(_reference(real_loops[name]), (2, info.frames))
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
    mp3 = _encode(real_songs[0], tmp_path / "whole.mp3")
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
    music = _reference(real_songs[0])
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
    m4a = _encode(real_songs[0], tmp_path / "clip.m4a")
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
    np.testing.assert_allclose(_reference(target), audio, atol=2**-23)
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


# ---------------------------------------------------------------------------------------------
# splitting


def _music_file(rendered_songs, target: Path, seconds: float) -> Path:
    """`seconds` of real rendered music (the two songs end to end), 48 kHz stereo 16-bit WAV."""
    samples = np.concatenate([sf.read(song, dtype="int16", always_2d=True)[0] for song in rendered_songs])
    frames = round(seconds * SAMPLE_RATE)
    assert len(samples) >= frames
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, samples[:frames], SAMPLE_RATE, subtype="PCM_16")
    return target


@pytest.fixture(scope="module")
def song_75s(rendered_songs, tmp_path_factory) -> Path:
    return _music_file(rendered_songs, tmp_path_factory.mktemp("split_source") / "song.wav", 75.0)


def test_split_75s_into_30_30_15(song_75s, tmp_path):
    original_hash = file_content_hash(song_75s)
    parts = split_audio_file(song_75s, tmp_path / "out", segment_seconds=30, min_tail_seconds=10.0)

    assert [p.name for p in parts] == ["song_part01.wav", "song_part02.wav", "song_part03.wav"]
    assert [sf.info(p).frames for p in parts] == [1_440_000, 1_440_000, 720_000]  # 30 s, 30 s, 15 s at 48 kHz
    assert all(sf.info(p).subtype == "PCM_24" for p in parts)
    source = _reference(song_75s)
    rejoined = np.concatenate([_reference(p) for p in parts], axis=1)
    np.testing.assert_array_equal(rejoined, source)  # 16-bit samples survive 24-bit WAV exactly, in order
    assert file_content_hash(song_75s) == original_hash


def test_split_60s_segments_and_dropped_tail(rendered_songs, song_75s, tmp_path):
    parts = split_audio_file(song_75s, tmp_path / "sixty", segment_seconds=60)
    assert [sf.info(p).frames for p in parts] == [2_880_000, 720_000]  # 60 s + 15 s tail

    song_65s = _music_file(rendered_songs, tmp_path / "in" / "short.wav", 65.0)
    parts = split_audio_file(song_65s, tmp_path / "thirty", segment_seconds=30)
    assert [sf.info(p).frames for p in parts] == [1_440_000, 1_440_000]  # the 5 s tail is dropped
    assert sorted(p.name for p in (tmp_path / "thirty").iterdir()) == ["short_part01.wav", "short_part02.wav"]


def test_split_short_files(real_songs, real_loops, tmp_path):
    parts = split_audio_file(real_songs[1], tmp_path, segment_seconds=30)  # 12 s >= 10 s: one part
    assert len(parts) == 1 and sf.info(parts[0]).frames == 12 * SAMPLE_RATE

    parts = split_audio_file(real_loops["drum_roll"], tmp_path, segment_seconds=30, min_tail_seconds=5.0)
    info = sf.info(parts[0])  # 44.1 kHz mono in, 48 kHz stereo out
    assert (info.samplerate, info.channels) == (SAMPLE_RATE, 2)
    assert abs(info.frames - round(probe_audio(real_loops["drum_roll"]).frames * 48_000 / 44_100)) <= 1

    with pytest.raises(AudioError, match="shorter than the 10 s minimum part"):
        split_audio_file(real_songs[0], tmp_path, segment_seconds=30)  # 6 s
    with pytest.raises(ValueError, match="segment_seconds"):
        split_audio_file(real_songs[0], tmp_path, segment_seconds=30, min_tail_seconds=40)


def test_split_same_stem_files_do_not_overwrite_each_other(rendered_songs, tmp_path):
    wav = _music_file(rendered_songs, tmp_path / "in" / "song.wav", 45.0)
    mp3 = _encode(wav, tmp_path / "in" / "song.mp3")
    hashes = {wav: file_content_hash(wav), mp3: file_content_hash(mp3)}

    from_mp3 = split_audio_file(mp3, tmp_path / "out")
    from_wav = split_audio_file(wav, tmp_path / "out")

    assert [p.name for p in from_mp3] == ["song_mp3_part01.wav", "song_mp3_part02.wav"]
    assert [p.name for p in from_wav] == ["song_wav_part01.wav", "song_wav_part02.wav"]
    assert len({file_content_hash(p) for p in from_mp3 + from_wav}) == 4
    assert {path: file_content_hash(path) for path in hashes} == hashes


def test_split_folder_reports_a_corrupt_file_and_finishes_the_rest(rendered_songs, real_loops, tmp_path):
    in_dir = tmp_path / "music"
    _music_file(rendered_songs, in_dir / "a_song.wav", 65.0)
    (in_dir / "b_broken.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(300))  # a tag, no audio
    shutil.copy(real_loops["loop_tabla"], in_dir / "c_tabla.FLAC")
    (in_dir / "live").mkdir()
    _music_file(rendered_songs, in_dir / "live" / "d_set.wav", 40.0)
    (in_dir / "notes.txt").write_text("not audio, not an audio extension either")
    before = {p: file_content_hash(p) for p in in_dir.rglob("*") if p.is_file()}
    calls = []

    result = split_folder(in_dir, tmp_path / "parts", 30, 10.0, progress=lambda *call: calls.append(call))

    out = tmp_path / "parts"
    assert sorted(p.relative_to(out).as_posix() for p in result.written) == [
        "a_song_part01.wav", "a_song_part02.wav", "c_tabla_part01.wav", "live/d_set_part01.wav",
        "live/d_set_part02.wav",
    ]  # fmt: skip
    assert all(p.is_file() for p in result.written)
    assert [f.path.name for f in result.failed] == ["b_broken.mp3"]
    assert isinstance(result.failed[0], FileFailure) and "corrupt" in result.failed[0].reason
    assert [(done, total, path.name) for done, total, path in calls] == [
        (1, 4, "a_song.wav"), (2, 4, "b_broken.mp3"), (3, 4, "c_tabla.FLAC"), (4, 4, "d_set.wav"),
    ]  # fmt: skip
    assert sf.info(out / "live" / "d_set_part02.wav").frames == 10 * SAMPLE_RATE  # a 10 s tail is kept
    assert {p: file_content_hash(p) for p in before} == before  # originals untouched


def test_split_folder_inside_the_input_does_not_split_its_own_parts(rendered_songs, tmp_path):
    in_dir = tmp_path / "music"
    _music_file(rendered_songs, in_dir / "song.wav", 45.0)
    first = split_folder(in_dir, in_dir / "split")
    second = split_folder(in_dir, in_dir / "split")  # a re-run: the parts are not inputs now
    assert [p.name for p in first.written] == [p.name for p in second.written] == ["song_part01.wav", "song_part02.wav"]
    assert second.failed == []
    with pytest.raises(AudioError, match="output folder is the input folder"):
        split_folder(in_dir, in_dir)
    with pytest.raises(AudioError, match="is not a folder"):
        split_folder(tmp_path / "nowhere", tmp_path / "out")


def test_split_folder_gives_each_segment_its_sources_labels_but_not_the_lyrics(rendered_songs, tmp_path):
    from acestep.dataset.sidecars import read_sidecars, sidecar_paths

    in_dir = tmp_path / "music"
    _music_file(rendered_songs, in_dir / "song.wav", 65.0)
    (in_dir / "song.wav.json").write_text(json.dumps({
        "caption": "bright chiptune march", "genre": "chiptune", "bpm": 128, "keyscale": "c major",
        "timesignature": "4", "language": "en", "lyrics": "[Verse]\nmarching on", "is_instrumental": False,
        "labelled_by": {"captioner": "x"}}))
    (in_dir / "song.txt").write_text("[Verse]\nmarching on, all night\n[Chorus]\nla la la\n")  # the person's lyrics
    _music_file(rendered_songs, in_dir / "bare.wav", 40.0)  # no sidecar: its segments get none

    result = split_folder(in_dir, tmp_path / "parts")

    out = tmp_path / "parts"
    expected = {"caption": "bright chiptune march", "genre": "chiptune", "bpm": 128, "keyscale": "C major",
                "timesignature": "4", "language": "en", "instrumental": False}
    song_parts = [out / "song_part01.wav", out / "song_part02.wav"]
    for part in song_parts:
        assert sidecar_paths(part) == {".json": part.with_name(part.name + ".json")}
        assert read_sidecars(part) == expected  # every song-level label, and no lyrics
        assert json.loads(part.with_name(part.name + ".json").read_text())["split_from"] == "song.wav"
    for part in (out / "bare_part01.wav", out / "bare_part02.wav"):
        assert part.is_file() and sidecar_paths(part) == {}
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == ["song_part01.wav.json",
                                                                          "song_part02.wav.json"]
    assert result.labelled == [p.with_name(p.name + ".json") for p in song_parts]
    assert (result.files, result.split, result.labelled_files) == (2, 2, 1)
    assert result.lyrics_left_out == [in_dir / "song.wav"]
    summary = result.describe()
    assert summary.splitlines()[0] == f"Split 2 of 2 file(s) into 4 segment(s) in {out}; 0 failed"
    assert ("labels: copied from the sidecars of 1 file(s) to 2 segment(s); "
            "lyrics are not copied: a segment holds part of the song") in summary


def test_split_folder_without_sidecars_writes_no_labels(rendered_songs, tmp_path):
    in_dir = tmp_path / "music"
    _music_file(rendered_songs, in_dir / "song.wav", 45.0)
    result = split_folder(in_dir, tmp_path / "parts", 30)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["song_part01.wav", "song_part02.wav"]
    assert result.labelled == [] and result.label_failures == [] and result.lyrics_left_out == []
    assert "labels: none copied (no file had a sidecar with labels)" in result.describe()
    assert "lyrics" not in result.describe()


def test_split_folder_reports_a_broken_sidecar_and_still_writes_the_segments(rendered_songs, tmp_path):
    in_dir = tmp_path / "music"
    _music_file(rendered_songs, in_dir / "broken.wav", 45.0)
    (in_dir / "broken.wav.json").write_text('{"caption": "half a file"')
    _music_file(rendered_songs, in_dir / "fast.wav", 35.0)
    (in_dir / "fast.json").write_text(json.dumps({"caption": "quick", "bpm": "fast"}))  # not a number
    _music_file(rendered_songs, in_dir / "good.wav", 35.0)
    (in_dir / "good.json").write_text(json.dumps({"genre": "march"}))
    calls = []

    result = split_folder(in_dir, tmp_path / "parts", 30, progress=lambda *call: calls.append(call))

    out = tmp_path / "parts"
    assert sorted(p.name for p in out.iterdir()) == [
        "broken_part01.wav", "broken_part02.wav", "fast_part01.wav", "good_part01.wav", "good_part01.wav.json"]
    assert result.failed == [] and len(calls) == 3
    assert [f.path.name for f in result.label_failures] == ["broken.wav", "fast.wav"]
    summary = result.describe()
    assert f"labels not copied for {in_dir / 'broken.wav'}: {in_dir / 'broken.wav.json'}: captioner sidecar is " \
           "not valid JSON" in summary
    assert f"labels not copied for {in_dir / 'fast.wav'}: {in_dir / 'fast.json'}: " in summary
    assert "bpm" in result.label_failures[1].reason and "its segments have no labels" in summary
    assert json.loads((out / "good_part01.wav.json").read_text())["genre"] == "march"


def test_split_folder_stops_between_files_when_asked(rendered_songs, tmp_path):
    in_dir = tmp_path / "music"
    for name in ("a.wav", "b.wav", "c.wav"):
        _music_file(rendered_songs, in_dir / name, 12.0)
    done = []
    result = split_folder(in_dir, tmp_path / "parts", 30, progress=lambda *call: done.append(call),
                          should_stop=lambda: len(done) == 2)
    assert result.cancelled and [p.name for p in result.written] == ["a_part01.wav", "b_part01.wav"]
    assert result.describe().startswith("Split 2 of 3 file(s) into 2 segment(s)") and "stopped" in result.describe()
