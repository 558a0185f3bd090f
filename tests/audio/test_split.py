"""acestep.audio.split on real music (rendered openmsx songs, sonic-pi recordings): cutting one file
into 30 s and 60 s parts, tails and short files, same-stem files, and whole folders with their
failures, their labels copied to each part (never the lyrics) and a stop between files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep.audio import SAMPLE_RATE, FileFailure, file_content_hash, probe_audio
from acestep.audio.split import split_audio_file, split_folder
from acestep.errors import AceStepError, AudioError

from .media import encode_as, reference_samples

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
    source = reference_samples(song_75s)
    rejoined = np.concatenate([reference_samples(p) for p in parts], axis=1)
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
    with pytest.raises(AceStepError, match=r"last part must be from 0 s to the segment length \(30 s\), got 40"):
        split_audio_file(real_songs[0], tmp_path, segment_seconds=30, min_tail_seconds=40)
    with pytest.raises(AceStepError, match="segment length must be a positive number of seconds, got -5"):
        split_audio_file(real_songs[0], tmp_path, segment_seconds=-5)


def test_split_same_stem_files_do_not_overwrite_each_other(rendered_songs, tmp_path):
    wav = _music_file(rendered_songs, tmp_path / "in" / "song.wav", 45.0)
    mp3 = encode_as(wav, tmp_path / "in" / "song.mp3")
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


def test_split_folder_leaves_out_hidden_files_and_folders_as_build_does(rendered_songs, tmp_path, monkeypatch):
    in_dir = tmp_path / "music"
    song = _music_file(rendered_songs, in_dir / "song.wav", 45.0)
    (in_dir / "._song.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # macOS metadata
    (in_dir / ".trash").mkdir()
    shutil.copy(song, in_dir / ".trash" / "song.wav")
    monkeypatch.chdir(tmp_path)  # a relative input folder, as typed on the command line
    result = split_folder(Path("music"), Path("out"))
    assert (result.files, result.failed) == (1, [])
    assert [p.as_posix() for p in result.written] == ["out/song_part01.wav", "out/song_part02.wav"]
    assert not (tmp_path / "out" / ".trash").exists()


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
