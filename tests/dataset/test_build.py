"""Building a dataset from a folder of real (tiny) audio files, their sidecars and CSV files."""

import json
from pathlib import Path

import pytest
import soundfile as sf

from acestep.dataset import (
    BuildResult,
    build_dataset,
    load_dataset,
    read_csv_metadata,
    read_sidecars,
    save_dataset,
    scan_audio_files,
)
from acestep.errors import DatasetError


def by_audio(result: BuildResult) -> dict:
    return {sample.audio: sample for sample in result.dataset.samples}


def failures(result: BuildResult) -> dict[str, str]:
    return {failure.path.name: failure.reason for failure in result.failed}


# --- scanning ---------------------------------------------------------------------------------


def test_scan_is_recursive_case_insensitive_sorted_and_skips_hidden(tmp_path, make_audio):
    for name in ("b/z.wav", "a.flac", "b/LOUD.WAV", "b/c/deep.ogg", ".cache/hidden.wav", "b/._a.wav"):
        make_audio(tmp_path / name, seconds=0.2)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8")

    found = scan_audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.flac", "b/LOUD.WAV", "b/c/deep.ogg", "b/z.wav"]
    assert all(p.is_absolute() for p in found)


def test_scan_refuses_a_missing_folder_or_a_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_audio_files(tmp_path / "nope")
    (tmp_path / "file.wav").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_audio_files(tmp_path / "file.wav")


# --- a folder with every kind of label --------------------------------------------------------


@pytest.fixture
def labelled_folder(tmp_path, make_audio) -> Path:
    root = tmp_path / "music"
    # Same stem, two formats, each with its own sidecar; the plain song.txt belongs to neither.
    make_audio(root / "album" / "song.mp3", seconds=1.5, rate=44_100, channels=1)
    make_audio(root / "album" / "song.wav", seconds=2.0, rate=48_000, channels=2)
    (root / "album" / "song.mp3.txt").write_text("[Verse]\nmp3 words", encoding="utf-8")
    (root / "album" / "song.wav.txt").write_text("[Chorus]\nwav words\n", encoding="utf-8")
    (root / "album" / "song.txt").write_text("ambiguous words", encoding="utf-8")
    # A plain sidecar beside a single file of that stem; a stray song.txt that is not its own.
    make_audio(root / "solo" / "other.flac", seconds=0.75, rate=44_100, channels=1)
    (root / "solo" / "other.txt").write_text("other words", encoding="utf-8")
    (root / "solo" / "song.txt").write_text("not other's words", encoding="utf-8")
    # Captioner JSON + lyrics .txt: the .txt lyrics win, the JSON gives the rest.
    make_audio(root / "capt" / "track.ogg", seconds=1.0, rate=48_000, channels=2)
    (root / "capt" / "track.json").write_text(json.dumps({
        "caption": "driving indie rock with jangly guitars", "genres": ["indie", "rock"], "bpm": "128",
        "timesignature": 4, "vocal_language": "English", "is_instrumental": False,
        "lyrics": "json words", "confidence": 0.93, "duration": 999,
    }), encoding="utf-8")
    (root / "capt" / "track.txt").write_text("txt words", encoding="utf-8")
    # A CSV with unusual headers: a path row, a bare-name row, and a row for no file.
    (root / "meta.csv").write_text(
        "Filename,Artist,Tempo,Key_Scale,Caption,Time Signature\n"
        "solo/other.flac,someone,90,C,calm csv piano,3/4\n"
        "track.ogg,someone,60,F#m,csv caption that the json overrides,\n"
        "ghost.wav,nobody,100,,,\n",
        encoding="utf-8",
    )
    return root


def test_build_applies_sidecars_and_csv_per_file(labelled_folder):
    progress = []
    result = build_dataset(labelled_folder, trigger_tag="zx", progress=lambda *args: progress.append(args))

    assert result.failed == []
    samples = by_audio(result)
    assert list(samples) == ["album/song.mp3", "album/song.wav", "capt/track.ogg", "solo/other.flac"]
    assert samples["album/song.mp3"].lyrics == "[Verse]\nmp3 words"
    assert samples["album/song.wav"].lyrics == "[Chorus]\nwav words"
    assert samples["solo/other.flac"].lyrics == "other words"

    other = samples["solo/other.flac"]
    assert (other.caption, other.bpm, other.keyscale, other.timesignature) == ("calm csv piano", 90.0, "C major", "3")
    track = samples["capt/track.ogg"]
    assert track.caption == "driving indie rock with jangly guitars"  # JSON over CSV
    assert track.genre == "indie, rock"
    assert track.bpm == 128.0  # JSON over CSV
    assert track.keyscale == "F# minor"  # only the CSV gives a key: "F#m" normalised
    assert track.timesignature == "4"
    assert track.language == "en"
    assert track.lyrics == "txt words"  # .txt over JSON
    assert track.instrumental is False

    # Durations from the files, not from the JSON's "duration".
    assert samples["album/song.wav"].duration == pytest.approx(2.0)
    assert samples["solo/other.flac"].duration == pytest.approx(0.75)
    assert track.duration == pytest.approx(1.0)
    assert samples["album/song.mp3"].duration == pytest.approx(1.5, abs=0.06)  # mp3 padding

    assert result.dataset.root == labelled_folder
    assert (result.dataset.name, result.dataset.trigger_tag, result.dataset.tag_position) == ("music", "zx", "prepend")
    assert any("meta.csv row 4: names 'ghost.wav', which is not among the audio files" in w for w in result.warnings)
    assert [(done, total, path.name) for done, total, path in progress] == [
        (1, 4, "song.mp3"), (2, 4, "song.wav"), (3, 4, "track.ogg"), (4, 4, "other.flac")]


def test_built_dataset_saves_and_loads_with_relative_paths(labelled_folder):
    result = build_dataset(labelled_folder, genre_ratio=0.5, seed=3)
    written = save_dataset(result.dataset, labelled_folder / "dataset.json")

    assert load_dataset(written) == result.dataset
    raw = json.loads(written.read_text(encoding="utf-8"))
    assert raw["samples"][0]["audio"] == "album/song.mp3"


def test_only_samples_with_a_genre_get_genre_prompts_and_a_shortfall_is_reported(labelled_folder):
    result = build_dataset(labelled_folder, genre_ratio=0.5)
    assert [s.audio for s in result.dataset.samples if s.prompt_source == "genre"] == ["capt/track.ogg"]
    assert any("asks for 2 genre-prompted samples, but only 1 have a genre" in w for w in result.warnings)


def test_language_argument_fills_gaps_and_all_instrumental_marks_every_file(labelled_folder):
    result = build_dataset(labelled_folder, language="German", all_instrumental=True)
    samples = by_audio(result)
    assert samples["solo/other.flac"].language == "de"
    assert samples["capt/track.ogg"].language == "en"  # its own label wins
    assert all(s.instrumental for s in samples.values())
    assert samples["album/song.wav"].lyrics == "[Chorus]\nwav words"  # kept, and warned about
    assert sum("has lyrics but is marked instrumental" in w for w in result.warnings) == 4


def test_without_the_switch_only_labelled_tracks_are_instrumental(tmp_path, make_audio):
    make_audio(tmp_path / "a.wav", seconds=0.3)
    make_audio(tmp_path / "b.wav", seconds=0.3)
    make_audio(tmp_path / "c.wav", seconds=0.3)
    (tmp_path / "b.txt").write_text("[Instrumental]\n", encoding="utf-8")
    (tmp_path / "c.json").write_text('{"language": "instrumental"}', encoding="utf-8")

    samples = by_audio(build_dataset(tmp_path))
    assert [samples[n].instrumental for n in ("a.wav", "b.wav", "c.wav")] == [False, True, True]
    assert samples["b.wav"].lyrics == "" and samples["a.wav"].language == "unknown"


@pytest.mark.parametrize("settings, message", [
    ({"tag_position": "middle"}, "tag position must be one of prepend, append, replace"),
    ({"genre_ratio": 30}, "genre ratio must be a number from 0 to 1, found 30"),
    ({"language": "klingon"}, "language must be one of the ACE-Step codes"),
])
def test_bad_settings_are_refused(tmp_path, make_audio, settings, message):
    make_audio(tmp_path / "a.wav", seconds=0.2)
    with pytest.raises(DatasetError, match=message):
        build_dataset(tmp_path, **settings)


def test_a_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no audio files"):
        build_dataset(tmp_path)


# --- sidecars ---------------------------------------------------------------------------------


def test_read_sidecars_is_per_file(labelled_folder):
    assert read_sidecars(labelled_folder / "album" / "song.mp3") == {"lyrics": "[Verse]\nmp3 words"}
    assert read_sidecars(labelled_folder / "solo" / "other.flac") == {"lyrics": "other words"}
    (labelled_folder / "album" / "song.wav.txt").unlink()
    # song.txt still belongs to neither: another audio file has the stem "song".
    assert read_sidecars(labelled_folder / "album" / "song.wav") == {}


def test_non_utf8_lyrics_fail_that_file_only(tmp_path, make_audio):
    make_audio(tmp_path / "good.wav", seconds=0.3)
    make_audio(tmp_path / "bad.wav", seconds=0.3)
    (tmp_path / "bad.txt").write_bytes("caf\xe9 ol\xe9".encode("cp1252"))

    with pytest.raises(DatasetError, match=r"bad.txt: lyrics sidecar is not UTF-8 text \(byte 0xe9 at position 3\)"):
        read_sidecars(tmp_path / "bad.wav")
    result = build_dataset(tmp_path)
    assert [s.audio for s in result.dataset.samples] == ["good.wav"]
    assert "bad.txt: lyrics sidecar is not UTF-8" in failures(result)["bad.wav"]


MALFORMED_SIDECARS = [  # (sidecar, content, message): a captioner's .json, then Side-Step's .txt
    ("track.json", "{not json", r"track.json: captioner sidecar is not valid JSON: .* line 1, column 2"),
    ("track.json", "[1, 2]", r"track.json: captioner sidecar must hold a JSON object, found a list"),
    ("track.json", '{"bpm": "fast"}', r"track.json: bpm must be a number, found 'fast'"),
    ("track.json", '{"key": "C", "keyscale": "D"}', r"track.json: 'key' and 'keyscale' both give the keyscale"),
    ("track.json", '{"language": "klingon"}', r"track.json: language must be one of the ACE-Step codes"),
    ("song.txt", "caption: x\nbpm: fast\nlyrics:\nla", r"song.txt: bpm must be a number, found 'fast'"),
    ("song.txt", "caption: x\nbpm: 900\n", r"song.txt: bpm must be above 0 and below 400, found 900"),
    ("song.txt", "key: C\nkeyscale: D\nlyrics:\n", r"song.txt: 'key' and 'keyscale' both give the keyscale"),
    ("song.txt", "caption: warm pads\nand a second caption line\nlyrics:\nla",
     r"song.txt: line 2 \('and a second caption line'\) is not a `name: value` label"),
]


@pytest.mark.parametrize("sidecar, content, message", MALFORMED_SIDECARS)
def test_a_malformed_sidecar_fails_that_file_only(tmp_path, make_audio, sidecar, content, message):
    audio = tmp_path / f"{Path(sidecar).stem}.wav"
    make_audio(audio, seconds=0.3)
    make_audio(tmp_path / "fine.wav", seconds=0.3)
    (tmp_path / sidecar).write_text(content, encoding="utf-8")

    with pytest.raises(DatasetError, match=message):
        read_sidecars(audio)
    result = build_dataset(tmp_path)
    assert [s.audio for s in result.dataset.samples] == ["fine.wav"]
    assert list(failures(result)) == [audio.name]


# Laid out as Side-Step's `write_sidecar` writes it: its five fields (an unknown one left blank or
# "N/A"), its own settings sorted, then the lyrics after `lyrics:`, colons and tags included.
SIDESTEP_SIDECAR = """caption: dreamy synthwave with warm pads
genre: synthwave, electronic
bpm: 110
key: A minor
signature: 4/4
custom_tag: zx
prompt_override: N/A
repeat: 2
tags: favourites, night drive
lyrics:
[Verse 1]
Neon lights: they call my name

[Chorus]
Love: it's all I need
"""


def test_sidestep_sidecar_gives_labels_and_lyrics(tmp_path, make_audio):
    make_audio(tmp_path / "song.wav", seconds=0.3)
    (tmp_path / "song.txt").write_text(SIDESTEP_SIDECAR, encoding="utf-8")
    # The captioner's JSON fills what the .txt leaves out; what the .txt gives wins.
    (tmp_path / "song.json").write_text('{"bpm": 96, "language": "en", "genre": "pop"}', encoding="utf-8")

    assert read_sidecars(tmp_path / "song.wav") == {
        "caption": "dreamy synthwave with warm pads", "genre": "synthwave, electronic", "bpm": 110.0,
        "keyscale": "A minor", "timesignature": "4", "language": "en",
        "lyrics": "[Verse 1]\nNeon lights: they call my name\n\n[Chorus]\nLove: it's all I need",
    }
    sample = by_audio(build_dataset(tmp_path))["song.wav"]
    assert (sample.caption, sample.genre, sample.bpm, sample.keyscale, sample.timesignature) == (
        "dreamy synthwave with warm pads", "synthwave, electronic", 110.0, "A minor", "4")
    assert sample.lyrics.startswith("[Verse 1]\nNeon lights") and "caption" not in sample.lyrics


@pytest.mark.parametrize("text, labels", [
    # No lyrics block: labels only (Side-Step's reader takes "Time Signature", "sig", "scale" too).
    ("caption: warm ambient pads\nTime Signature: 3/4\nScale: Dm\n", {
        "caption": "warm ambient pads", "timesignature": "3", "keyscale": "D minor"}),
    ("caption: drone\nsig: 6/8", {"caption": "drone", "timesignature": "6"}),
    ("caption: pads\nsignature: 4\nlanguage: ja", {"caption": "pads", "timesignature": "4", "language": "ja"}),
    # Side-Step writes an empty `lyrics:` when it has none; its flag marks an instrumental.
    ("caption: piano\nbpm:\nis_instrumental: true\nlyrics:\n", {"caption": "piano", "instrumental": True}),
    ("\ufeff\ncaption: piano\nlyrics: [Instrumental]\n", {"caption": "piano", "instrumental": True}),
    # With a lyrics block, a name Side-Step or we do not know is ignored, as in a .json sidecar.
    ("caption: piano\nartist: someone\nlyrics:\nla la", {"caption": "piano", "lyrics": "la la"}),
    # Text after `lyrics:` on its own line starts the lyrics.
    ("genre: folk\nlyrics: first line\nsecond line", {"genre": "folk", "lyrics": "first line\nsecond line"}),
])
def test_sidestep_sidecar_variants(tmp_path, make_audio, text, labels):
    make_audio(tmp_path / "song.wav", seconds=0.2)
    (tmp_path / "song.txt").write_text(text, encoding="utf-8")
    assert read_sidecars(tmp_path / "song.wav") == labels


@pytest.mark.parametrize("text", [
    "[Verse 1]\nLove: it's all I need\nKey: to my heart",  # a section tag first
    "Love: it's all I need\nBaby: don't you go",  # colons, but no name we know
    "Key: the one to my heart\nOpen the door and let me in",  # a known name, then a plain line
    "Tempo: slow it down\n\n[Chorus]\nHold on",
    "Title: Night Drive\nlyrics:\nla la",  # a first line with a name we do not know
])
def test_plain_lyrics_stay_lyrics(tmp_path, make_audio, text):
    make_audio(tmp_path / "song.wav", seconds=0.2)
    (tmp_path / "song.txt").write_text(text + "\n", encoding="utf-8")
    assert read_sidecars(tmp_path / "song.wav") == {"lyrics": text}


# --- CSV --------------------------------------------------------------------------------------


def test_read_csv_metadata_keys_flexible_columns_and_values(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "tags.csv").write_bytes(
        "\ufeffFILE;Description;Genres;BPM;Key;TS;Lang;Is_Instrumental;Lyrics\n"
        'a.wav;warm pad;ambient;72.5;Bbm;6/8;Japanese;yes;"line one\nline two"\n'
        "deeper/b.flac;;;;;;;no;\n".encode("utf-8"))

    metadata = read_csv_metadata(tmp_path)
    expected_a = {"caption": "warm pad", "genre": "ambient", "bpm": 72.5, "keyscale": "Bb minor",
                  "timesignature": "6", "language": "ja", "instrumental": True, "lyrics": "line one\nline two"}
    assert metadata["sub/a.wav"] == metadata["a.wav"] == expected_a
    assert metadata["sub/deeper/b.flac"] == metadata["b.flac"] == {"instrumental": False}


def test_csv_without_a_file_column_is_refused_naming_its_columns(tmp_path, make_audio):
    make_audio(tmp_path / "a.wav", seconds=0.3)
    (tmp_path / "keys.csv").write_text("Title,BPM,Key\nMy song,120,Am\n", encoding="utf-8")

    with pytest.raises(DatasetError, match=r"keys.csv: has no file column \(file, filename, .*\); "
                                           r"its columns are: 'Title', 'BPM', 'Key'"):
        read_csv_metadata(tmp_path)
    result = build_dataset(tmp_path)  # the audio still builds; the CSV is listed as failed
    assert [s.audio for s in result.dataset.samples] == ["a.wav"]
    assert "has no file column" in failures(result)["keys.csv"]


def test_bad_csv_value_fails_the_file_of_that_row_only(tmp_path, make_audio):
    make_audio(tmp_path / "a.wav", seconds=0.3)
    make_audio(tmp_path / "b.wav", seconds=0.3)
    (tmp_path / "meta.csv").write_text("file,bpm\na.wav,fast\nb.wav,100\n", encoding="utf-8")

    with pytest.raises(DatasetError, match=r"meta.csv row 2: bpm must be a number, found 'fast'"):
        read_csv_metadata(tmp_path)
    result = build_dataset(tmp_path)
    assert [(s.audio, s.bpm) for s in result.dataset.samples] == [("b.wav", 100.0)]
    assert "meta.csv row 2: bpm must be a number" in failures(result)["a.wav"]


def test_bare_csv_name_matching_two_files_is_refused_for_both(tmp_path, make_audio):
    make_audio(tmp_path / "x" / "take.wav", seconds=0.3)
    make_audio(tmp_path / "y" / "take.wav", seconds=0.3)
    make_audio(tmp_path / "y" / "fine.wav", seconds=0.3)
    (tmp_path / "meta.csv").write_text("file,caption\ntake.wav,which one?\n", encoding="utf-8")

    result = build_dataset(tmp_path)
    assert [s.audio for s in result.dataset.samples] == ["y/fine.wav"]
    assert [f.path.relative_to(tmp_path).as_posix() for f in result.failed] == ["x/take.wav", "y/take.wav"]
    assert "names 'take.wav', which matches 2 audio files" in result.failed[0].reason


# --- broken audio -----------------------------------------------------------------------------


def test_text_file_named_wav_becomes_a_failure_and_the_rest_builds(tmp_path, make_audio):
    make_audio(tmp_path / "good.wav", seconds=0.5, rate=44_100, channels=1)
    (tmp_path / "notes.wav").write_text("these are my notes, not audio\n" * 10, encoding="utf-8")
    (tmp_path / "empty.flac").write_bytes(b"")

    result = build_dataset(tmp_path)
    assert [s.audio for s in result.dataset.samples] == ["good.wav"]
    reasons = failures(result)
    assert set(reasons) == {"notes.wav", "empty.flac"}
    assert "text" in reasons["notes.wav"].lower()
    assert "empty" in reasons["empty.flac"].lower()
    assert sf.info(tmp_path / "good.wav").samplerate == 44_100
