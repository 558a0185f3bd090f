"""Tempo and key estimation (acestep.audio.tempo, acestep.audio.key, analysis.analyze) on real music
and on signals whose tempo and key are known by construction.

Accuracy on real music: all 31 openmsx MIDI songs (Debian openttd-openmsx), each rendered whole
with fluidsynth and TimGM6mb at 22.05 kHz and analysed by `analyze(path)` as a labeller calls it
(the first 240 s: whole songs, two of them cut at 240 s). Ground truth from the MIDI file over
the same span:
- tempo: the MIDI tempo (quarter notes per minute) in force over at least 90 % of the span (the
  MIDI default 120 where a file sets none: ttsong_iii_imuh3); midnight_snow_run (120 -> 150 BPM
  ramp) has no such tempo and is left out of the BPM figure;
- key, "brief's rule": the key-signature event in force over most of the span where the file has
  one (the 11 redfarn songs), otherwise the notes' key;
- key, "notes": Krumhansl-Kessler correlation of the duration-weighted pitch-class histogram of
  the non-drum notes, for every song.
A BPM passes within 2 % of the truth or of its double or half; a key passes when it is the
truth or its relative major/minor.

Measured on this machine (2 cores), 2025-11-26:
- BPM: 28 of 30 (93 %) pass; 22 exact, 6 at the double or half. The two failures
  (busy_schedule 134 -> 89.3, the_fast_route 128 -> 85.3) are 2/3 of the notated tempo:
  their onsets repeat every 1.5 quarter notes (autocorrelation 0.64 and 0.66) and hardly at the
  quarter note (0.09 and 0.18), nor at two or four quarters (0.15 / 0.15, 0.23 / 0.20): the
  notated quarter is not the pulse one hears.
- Key against the notes: 24 of 31 (77 %) pass.
- Key by the brief's rule: 20 of 31 (65 %) pass, below the issue's 70 %. Four of the eleven key
  signatures contradict the notes themselves (5432gone_redfarn and city_blues_redfarn: G major
  signature, blues whose notes correlate best with G minor; mosey_along_redfarn: C major
  signature, notes in C minor; the_hobo_redfarn: G major signature, notes in C major) and the
  estimate agrees with the notes in all four. The test asserts the issue's 70 % against the
  notes and the measured level (60 %) against the brief's rule, so a regression shows either way.
- Key errors against the notes: a fifth away (chemistry_lab E minor -> B minor, keep_on_rolling
  C -> F major, midnight_snow_run E minor -> A minor, tttheme2 C major -> G minor), the parallel
  mode (flying_scotsman, train_filled_with_cash), and no key for the_fast_route, which changes
  key (20 s windows give Bb minor, F minor, Bb major and E minor; best whole-song correlation 0.48).
- Time: rendering about 15 s (two fluidsynth processes), analysing the 31 songs (3,993 s of
  audio) 11-13 s; the whole file 35 s on an idle machine, 65-75 s while other jobs share the cores.
Per-song table: run `pytest tests/audio/test_tempo_key.py -s -k openmsx`.
"""

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from acestep.audio.analysis import AudioAnalysis, analyze, estimate_bpm, estimate_key
from acestep.audio.key import (
    MAJOR_PROFILE,
    MINOR_PROFILE,
    PITCH_CLASSES,
    estimate_tuning,
    key_correlations,
    pitch_class_profile,
)
from acestep.audio.tempo import onset_envelope
from acestep.errors import AudioError

RATE = 22_050
OPENMSX_DIR = Path("/usr/share/games/openttd/baseset/openmsx")
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
APT_HINT = "sudo apt-get install -y --no-install-recommends fluidsynth timgm6mb-soundfont openttd-openmsx"
ANALYSED_SECONDS = 240.0  # analyze()'s default max_seconds
STEADY_SHARE = 0.9  # a tempo must hold over this share of the span to be the truth
BPM_TOLERANCE = 0.02
MIN_BPM_PASS, MIN_KEY_PASS_NOTES, MIN_KEY_PASS_RULE = 0.80, 0.70, 0.60


# ---------------------------------------------------------------------------------------------
# signals with a known tempo or key


def _click_track(bpm: float, seconds: float = 30.0) -> np.ndarray:
    """Decaying 1 kHz blips at exactly `bpm`, the first at 0.1 s."""
    signal = np.zeros(round(seconds * RATE))
    t = np.arange(round(0.01 * RATE)) / RATE
    blip = np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.003)
    for start in np.arange(0.1, seconds - 0.02, 60.0 / bpm):
        index = round(start * RATE)
        signal[index : index + len(blip)] += blip
    return 0.5 * signal


def _note(midi: int, seconds: float, partials: int = 6) -> np.ndarray:
    """A tone of `partials` sine harmonics (amplitude 1/h) with a 10 ms fade in and out."""
    t = np.arange(round(seconds * RATE)) / RATE
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, partials + 1) if f0 * h < RATE / 2)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return tone * fade


def _progression(chords: list[list[int]], seconds: float = 1.5, repeats: int = 3) -> np.ndarray:
    """Block chords (MIDI note lists) one after another, the whole progression `repeats` times."""
    audio = np.concatenate([sum(_note(note, seconds) for note in chord) for chord in chords] * repeats)
    return 0.8 * audio / np.abs(audio).max()


# I-IV-V-I in E major (E G# B, A C# E, B D# F#, with bass), i-iv-V-i in C minor (C Eb G, F Ab C, G B D).
E_MAJOR = [[40, 52, 56, 59], [45, 52, 57, 61], [47, 51, 54, 59], [40, 52, 56, 59]]
C_MINOR = [[36, 48, 51, 55], [41, 48, 53, 56], [43, 47, 50, 55], [36, 48, 51, 55]]


@pytest.mark.parametrize("bpm", [90.0, 123.7, 150.0])
def test_click_track_tempo_is_resolved_finer_than_the_tempogram_bins(bpm):
    estimate, confidence = estimate_bpm(_click_track(bpm), RATE)
    _, frame_rate = onset_envelope(np.zeros(RATE), RATE)
    lag = 60.0 * frame_rate / bpm
    bin_width = 60.0 * frame_rate / np.floor(lag) - 60.0 * frame_rate / np.ceil(lag)
    assert bin_width > 1.5  # one autocorrelation lag step is 1.6-3.6 BPM at these tempi ...
    assert estimate == pytest.approx(bpm, abs=0.5)  # ... the estimate is within 0.5
    assert abs(estimate - bpm) < 0.1 * bin_width
    assert confidence > 0.5


def test_click_track_tempo_is_found_with_another_sample_rate():
    clicks = _click_track(123.7)
    resampled = np.interp(np.arange(round(len(clicks) * 48_000 / RATE)) * RATE / 48_000, np.arange(len(clicks)), clicks)
    estimate, _ = estimate_bpm(resampled, 48_000)
    assert estimate == pytest.approx(123.7, abs=0.5)


@pytest.mark.parametrize(("chords", "tonic", "scale"), [(E_MAJOR, "E", "major"), (C_MINOR, "C", "minor")])
def test_chord_progression_gives_its_key(chords, tonic, scale):
    key, mode, confidence = estimate_key(_progression(chords), RATE)
    assert (key, mode) == (tonic, scale)
    assert 0.05 < confidence <= 1.0


def test_key_survives_detuning_and_the_tuning_is_measured():
    cents = 30.0
    audio = _progression(E_MAJOR)
    ratio = 2 ** (cents / 1200)
    stretched = np.interp(np.arange(int(len(audio) / ratio)) * ratio, np.arange(len(audio)), audio)  # 30 cents up
    profile, tuning, _ = pitch_class_profile(stretched, RATE)
    assert tuning == pytest.approx(cents / 100, abs=0.05)
    assert estimate_key(stretched, RATE)[:2] == ("E", "major")
    assert PITCH_CLASSES[int(np.argmax(profile))] in ("E", "B", "G#", "Ab")


def test_estimate_tuning_is_a_circular_mean():
    frequencies = 440.0 * 2 ** (np.array([0.45, -0.45, 0.45]) / 12)  # +45, -45, +45 cents
    assert abs(estimate_tuning(frequencies, np.ones(3))) == pytest.approx(0.5, abs=0.05)  # not the plain mean 0.15
    assert estimate_tuning(np.array([]), np.array([])) == 0.0


def test_key_correlations_of_the_c_major_scale():
    scale = np.zeros(12)
    scale[[0, 2, 4, 5, 7, 9, 11]] = 1.0
    correlations = key_correlations(scale)
    assert np.unravel_index(np.argmax(correlations), correlations.shape) == (0, 0)  # C major
    assert correlations[0, 0] == pytest.approx(0.7564, abs=1e-4)  # np.corrcoef(scale, KK major)
    assert correlations[1, 9] == pytest.approx(0.7121, abs=1e-4)  # A minor, the relative, comes close
    for tonic in range(12):  # every rotation against numpy's own Pearson correlation
        for row, profile in enumerate((MAJOR_PROFILE, MINOR_PROFILE)):
            assert correlations[row, tonic] == pytest.approx(np.corrcoef(scale, np.roll(profile, tonic))[0, 1])
    assert not key_correlations(np.ones(12)).any()


def test_silence_has_no_tempo_and_no_key():
    silence = np.zeros(10 * RATE)
    assert estimate_bpm(silence, RATE) == (None, 0.0)
    assert estimate_key(silence, RATE) == (None, None, 0.0)


def test_noise_and_a_steady_tone_have_no_tempo_and_noise_has_no_key():
    noise = np.random.default_rng(0).standard_normal(20 * RATE) * 0.1
    bpm, confidence = estimate_bpm(noise, RATE)
    assert bpm is None and confidence < 0.25
    assert estimate_key(noise, RATE) == (None, None, 0.0)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(20 * RATE) / RATE)
    assert estimate_bpm(tone, RATE)[0] is None


def test_under_two_seconds_has_no_tempo():
    assert estimate_bpm(_click_track(120.0, seconds=1.99), RATE) == (None, 0.0)
    assert estimate_bpm(_click_track(120.0, seconds=2.0), RATE)[0] == pytest.approx(120.0, rel=0.02)  # 4 beats: coarser


@pytest.mark.parametrize(
    ("signal", "rate", "message"),
    [
        (np.zeros((2, 1000)), RATE, "1-D"),
        (np.array([0.0, np.nan, 0.0]), RATE, "NaN"),
        (np.zeros(1000), 4000, "at least 8000 Hz"),
    ],
)
def test_unusable_arrays_are_refused(signal, rate, message):
    with pytest.raises(ValueError, match=message):
        estimate_bpm(signal, rate)
    with pytest.raises(ValueError, match=message):
        estimate_key(signal, rate)


# ---------------------------------------------------------------------------------------------
# analyze(path)


def test_analyze_a_file_with_known_tempo_and_key(tmp_path):
    music = _progression(C_MINOR)
    mix = 0.6 * (music + _click_track(120.0, seconds=music.size / RATE))
    path = tmp_path / "song.flac"
    sf.write(path, soxr.resample(np.stack([mix, mix], axis=1), RATE, 44_100), 44_100)  # decoded back to 22.05 kHz
    result = analyze(path)
    assert result.duration == pytest.approx(18.0, abs=0.01)
    assert result.bpm == pytest.approx(120.0, abs=0.5)
    assert (result.key, result.scale, result.keyscale) == ("C", "minor", "C minor")
    assert 0.0 < result.bpm_confidence <= 1.0 and 0.0 < result.key_confidence <= 1.0


def test_analyze_reports_the_whole_duration_when_only_the_start_is_analysed(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _click_track(100.0, seconds=12.0), RATE)
    result = analyze(path, max_seconds=5.0)
    assert result.duration == pytest.approx(12.0, abs=1e-3)
    assert result.bpm == pytest.approx(100.0, abs=0.5)


def test_analyze_a_silent_file_gives_no_tempo_and_no_key(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((3 * RATE, 2)), RATE)
    assert analyze(path) == AudioAnalysis(3.0, None, 0.0, None, None, 0.0)
    assert analyze(path).keyscale == ""


def test_analyze_refuses_bad_files_naming_them(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    with pytest.raises(AudioError, match="notes.wav"):
        analyze(text)
    with pytest.raises(AudioError, match="file not found"):
        analyze(tmp_path / "missing.mp3")
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        analyze(text, max_seconds=0)


def test_analyze_takes_seconds_on_a_four_minute_song(tmp_path):
    song = np.tile(_progression(E_MAJOR, repeats=1) + _click_track(100.0, seconds=6.0), 40)  # 240 s
    path = tmp_path / "four_minutes.wav"
    sf.write(path, np.stack([song, song], axis=1) * 0.5, RATE)
    start = time.perf_counter()
    result = analyze(path)
    elapsed = time.perf_counter() - start
    assert result.duration == pytest.approx(240.0, abs=0.01)
    assert elapsed < 15.0, f"analysing 240 s took {elapsed:.1f} s"


def test_real_recordings(real_loops):
    amen = analyze(real_loops["loop_amen_full"])  # four bars of the Amen break: 16 beats in 6.857 s
    assert amen.bpm == pytest.approx(16 * 60 / 6.857, rel=0.02)
    roll = analyze(real_loops["drum_roll"])  # a snare roll: no beat
    assert roll.bpm is None and roll.bpm_confidence < 0.25


# ---------------------------------------------------------------------------------------------
# accuracy on real music: the openmsx songs


@dataclass(frozen=True)
class SongTruth:
    """What the MIDI file says about the analysed span."""

    bpm: float | None  # None: no tempo holds over 90 % of the span
    rule_key: tuple[str, str]  # key signature where present, else notes_key
    rule_source: str  # "signature" or "notes"
    notes_key: tuple[str, str]


def _spans(starts: list[float], end: float) -> list[float]:
    """Seconds each event stays in force until the next one or `end` ([] for no events)."""
    if not starts:
        return []
    return [max(0.0, min(nxt, end) - min(begin, end)) for begin, nxt in zip(starts, [*starts[1:], end], strict=True)]


def _steady_tempo(music, end: float) -> float | None:
    """The MIDI tempo in force over at least 90 % of [0, end], else None."""
    times, tempi = music.get_tempo_changes()
    held: dict[float, float] = {}
    for tempo, seconds in zip(tempi, _spans(list(times), end), strict=True):
        held[round(float(tempo), 3)] = held.get(round(float(tempo), 3), 0.0) + seconds
    tempo, seconds = max(held.items(), key=lambda item: item[1])
    return tempo if seconds >= STEADY_SHARE * end else None


def _notes_key(music, end: float) -> tuple[str, str]:
    """Krumhansl-Kessler key of the duration-weighted pitch classes of the non-drum notes."""
    histogram = np.zeros(12)
    for instrument in music.instruments:
        if not instrument.is_drum:
            for note in instrument.notes:
                histogram[note.pitch % 12] += max(0.0, min(note.end, end) - note.start)
    correlations = key_correlations(histogram)
    mode, tonic = np.unravel_index(int(np.argmax(correlations)), correlations.shape)
    return PITCH_CLASSES[tonic], ("major", "minor")[mode]


def _signature_key(music, end: float) -> tuple[str, str] | None:
    """The key signature in force over most of [0, end]; None when the file has none."""
    changes = music.key_signature_changes
    held: dict[int, float] = {}
    for change, seconds in zip(changes, _spans([change.time for change in changes], end), strict=True):
        held[change.key_number] = held.get(change.key_number, 0.0) + seconds
    if not held:
        return None
    number = max(held, key=held.get)  # pretty_midi: 0-11 major, 12-23 minor, tonic = number % 12
    return PITCH_CLASSES[number % 12], ("major", "minor")[number // 12]


def _midi_truth(midi: Path, span: float) -> SongTruth:
    import pretty_midi

    music = pretty_midi.PrettyMIDI(str(midi))
    end = min(span, music.get_end_time())
    notes_key, signature = _notes_key(music, end), _signature_key(music, end)
    if signature is None:
        return SongTruth(_steady_tempo(music, end), notes_key, "notes", notes_key)
    return SongTruth(_steady_tempo(music, end), signature, "signature", notes_key)


def _relative(key: tuple[str, str]) -> tuple[str, str]:
    index = PITCH_CLASSES.index(key[0])
    if key[1] == "major":
        return PITCH_CLASSES[(index + 9) % 12], "minor"
    return PITCH_CLASSES[(index + 3) % 12], "major"


def _key_passes(estimate: tuple[str | None, str | None], truth: tuple[str, str]) -> bool:
    return estimate in (truth, _relative(truth))


def _bpm_passes(estimate: float | None, truth: float) -> bool:
    return estimate is not None and any(abs(estimate - m * truth) <= BPM_TOLERANCE * m * truth for m in (1.0, 2.0, 0.5))


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else "pass" if passed else "FAIL"


def _table_row(name: str, truth: SongTruth, result: AudioAnalysis, bpm_ok: bool | None, rule_ok: bool,
               notes_ok: bool) -> str:
    true_bpm = "-" if truth.bpm is None else f"{truth.bpm:g}"
    estimated_bpm = "-" if result.bpm is None else f"{result.bpm:.2f}"
    return (f"{name:24s} {true_bpm:>6} {estimated_bpm:>7} {_verdict(bpm_ok):4s} {' '.join(truth.rule_key):9s} "
            f"({truth.rule_source:9s}) {' '.join(truth.notes_key):9s} {result.keyscale or '-':9s} "
            f"{_verdict(rule_ok):4s} {_verdict(notes_ok)}")


@pytest.fixture(scope="module")
def openmsx_renders(tmp_path_factory) -> list[Path]:
    """Every openmsx song rendered whole at 22.05 kHz, two fluidsynth processes at a time."""
    midis = sorted(OPENMSX_DIR.glob("*.mid"))
    fluidsynth = shutil.which("fluidsynth")
    if not midis or not SOUNDFONT.exists() or fluidsynth is None:
        pytest.skip(f"openmsx songs, the TimGM6mb soundfont or fluidsynth missing; install them: {APT_HINT}")
    out_dir = tmp_path_factory.mktemp("openmsx")
    wavs = [out_dir / f"{midi.stem}.wav" for midi in midis]
    pending = list(zip(midis, wavs, strict=True))
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < 2:
            midi, wav = pending.pop(0)
            command = [fluidsynth, "-ni", "-q", "-g", "0.25", "-r", str(RATE), "-F", str(wav), "-T", "wav", "-O", "s16"]
            running.append(subprocess.Popen([*command, str(SOUNDFONT), str(midi)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        running[0].wait(timeout=120)
        finished = running.pop(0)
        assert finished.returncode == 0, f"fluidsynth failed on {finished.args[-1]}"
    return wavs


@pytest.mark.slow  # renders and analyses 31 songs
def test_accuracy_on_rendered_openmsx_songs(openmsx_renders):
    rows, bpm_results, rule_results, notes_results = [], [], [], []
    start = time.perf_counter()
    for wav in openmsx_renders:
        truth = _midi_truth(OPENMSX_DIR / f"{wav.stem}.mid", ANALYSED_SECONDS)
        result = analyze(wav)
        estimate = (result.key, result.scale)
        bpm_ok = _bpm_passes(result.bpm, truth.bpm) if truth.bpm is not None else None
        rule_ok, notes_ok = _key_passes(estimate, truth.rule_key), _key_passes(estimate, truth.notes_key)
        if bpm_ok is not None:
            bpm_results.append(bpm_ok)
        rule_results.append(rule_ok)
        notes_results.append(notes_ok)
        rows.append(_table_row(wav.stem, truth, result, bpm_ok, rule_ok, notes_ok))
    elapsed = time.perf_counter() - start
    header = "song                     trueBPM  estBPM bpm  rule key  (source)    notes key est key   rule notes"
    bpm_rate, rule_rate, notes_rate = (sum(r) / len(r) for r in (bpm_results, rule_results, notes_results))
    summary = (f"BPM {sum(bpm_results)}/{len(bpm_results)} ({bpm_rate:.0%}); key by rule {sum(rule_results)}/"
               f"{len(rule_results)} ({rule_rate:.0%}); key vs notes {sum(notes_results)}/{len(notes_results)} "
               f"({notes_rate:.0%}); analysis {elapsed:.1f} s")
    report = "\n".join([header, *rows, summary])
    print("\n" + report)
    assert len(openmsx_renders) == 31 and len(bpm_results) == 30, report
    assert bpm_rate >= MIN_BPM_PASS, report
    assert notes_rate >= MIN_KEY_PASS_NOTES, report
    assert rule_rate >= MIN_KEY_PASS_RULE, report
