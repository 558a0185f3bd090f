"""The dataset report on real (tiny) files: figures per file, clipping, silence, duplicates,
missing labels and unreadable files; as data and as text."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from audio.media import ffmpeg_encode, truncated_copy

from acestep.dataset import Dataset, Sample, build_dataset, dataset_report, format_report
from acestep.dataset.report import folder_report


@pytest.fixture
def dataset(tmp_path, make_audio) -> Dataset:
    make_audio(tmp_path / "quiet_mono.flac", seconds=1.5, rate=44_100, channels=1, amplitude=0.3)
    make_audio(tmp_path / "songs" / "stereo.wav", seconds=2.0, rate=48_000, channels=2, amplitude=0.5, kind="noise")
    # A sine driven past full scale (left 2.0, right 1.8 × full scale): most samples sit at +-1.
    make_audio(tmp_path / "songs" / "clipped.wav", seconds=1.0, rate=48_000, channels=2, amplitude=2.0,
               subtype="PCM_16")
    make_audio(tmp_path / "silent.wav", seconds=1.0, rate=48_000, channels=2, kind="silence")
    shutil.copyfile(tmp_path / "songs" / "stereo.wav", tmp_path / "copy_of_stereo.wav")
    (tmp_path / "notes.wav").write_text("not audio at all\n" * 20, encoding="utf-8")
    samples = [
        Sample("quiet_mono.flac", caption="soft piano", bpm=80.0, keyscale="C major", instrumental=True),
        Sample("songs/stereo.wav", genre="noise", lyrics="la la", bpm=120.0, keyscale="A minor"),
        Sample("songs/clipped.wav", caption="loud", lyrics="hey", keyscale="E minor"),
        Sample("silent.wav", caption="nothing", instrumental=True, bpm=60.0),
        Sample("copy_of_stereo.wav", caption="same file again", instrumental=True, lyrics="stray words",
               bpm=120.0, keyscale="A minor"),
        Sample("notes.wav", caption="a text file", instrumental=True, bpm=90.0, keyscale="D major"),
        Sample("gone.wav"),
    ]
    return Dataset("report test", samples, root=tmp_path)


def test_report_figures_and_problems(dataset, tmp_path):
    progress = []
    report = dataset_report(dataset, progress=lambda *args: progress.append(args[:2]))

    assert report.count == 7
    files = {f.audio: f for f in report.files}
    assert list(files) == ["quiet_mono.flac", "songs/stereo.wav", "songs/clipped.wav", "silent.wav",
                           "copy_of_stereo.wav"]
    assert (files["quiet_mono.flac"].duration, files["quiet_mono.flac"].sample_rate,
            files["quiet_mono.flac"].channels) == (pytest.approx(1.5), 44_100, 1)
    assert (files["songs/stereo.wav"].duration, files["songs/stereo.wav"].channels) == (pytest.approx(2.0), 2)
    assert report.total_duration == pytest.approx(1.5 + 2.0 + 1.0 + 1.0 + 2.0)
    assert report.sample_rates == {44_100: 1, 48_000: 4}
    assert report.channels == {1: 1, 2: 4}

    assert files["quiet_mono.flac"].peak_dbfs == pytest.approx(-10.46, abs=0.05)  # 0.3 of full scale
    assert report.clipped == ["songs/clipped.wav"]
    # Share of a sine of amplitude A at or above 0.999: 1 - 2/pi * asin(0.999 / A), per channel.
    expected = np.mean([1 - 2 / np.pi * np.arcsin(0.999 / amplitude) for amplitude in (2.0, 1.8)])
    assert files["songs/clipped.wav"].clipped_fraction == pytest.approx(expected, abs=0.002)
    assert files["quiet_mono.flac"].clipped_fraction == 0.0
    assert report.silent == ["silent.wav"]
    assert report.duplicates == [["songs/stereo.wav", "copy_of_stereo.wav"]]

    assert report.missing == {
        "caption": ["gone.wav"],
        "lyrics": ["gone.wav"],  # the others have lyrics or are instrumental
        "bpm": ["songs/clipped.wav", "gone.wav"],
        "key": ["silent.wav", "gone.wav"],
    }
    assert report.instrumental_with_lyrics == ["copy_of_stereo.wav"]
    unreadable = {f.path.name: f.reason for f in report.unreadable}
    assert set(unreadable) == {"notes.wav", "gone.wav"}
    assert "text" in unreadable["notes.wav"].lower() and "not found" in unreadable["gone.wav"]
    assert [f.path for f in report.unreadable] == [tmp_path / "notes.wav", tmp_path / "gone.wav"]
    assert not report.ok
    assert progress == [(i, 7) for i in range(1, 8)]


def test_report_as_data_is_plain_json(dataset):
    data = dataset_report(dataset).to_dict()
    text = json.dumps(data, allow_nan=False)  # -inf peaks of silence become null
    again = json.loads(text)
    assert again["count"] == 7 and again["ok"] is False
    assert again["duplicates"] == [["songs/stereo.wav", "copy_of_stereo.wav"]]
    silent = next(f for f in again["files"] if f["audio"] == "silent.wav")
    assert silent["peak_dbfs"] is None and silent["silent"] is True
    assert {entry["audio"].rsplit("/", 1)[-1] for entry in again["unreadable"]} == {"notes.wav", "gone.wav"}


def test_report_as_text_names_each_problem(dataset):
    text = format_report(dataset_report(dataset))
    assert text.splitlines()[0] == "Dataset 'report test': 7 samples, 0:08 of audio in 5 readable file(s)"
    assert "Sample rates: 44100 Hz × 1, 48000 Hz × 4" in text
    assert "Channels: mono × 1, stereo × 4" in text
    assert "Silent (1):\n  silent.wav" in text
    assert "Clipped, over 0.1% of samples at full scale (1):\n  songs/clipped.wav: 64.67%" in text
    assert "  songs/stereo.wav = copy_of_stereo.wav" in text
    assert "Missing labels: no BPM (2):\n  songs/clipped.wav\n  gone.wav" in text
    assert "notes.wav: " in text and "Unreadable (2):" in text
    files = text.split("Files:\n", 1)[1].splitlines()
    assert len(files) == 5 and len({line.index(" Hz") for line in files}) == 1  # one column, whatever the name
    assert len({line.index("dBFS") for line in files if "dBFS" in line}) == 1


def test_header_only_report_skips_levels_and_hashes(dataset):
    report = dataset_report(dataset, analyse_audio=False)
    assert len(report.files) == 5 and report.sample_rates == {44_100: 1, 48_000: 4}
    assert report.clipped == report.silent == report.duplicates == []
    assert all(f.peak_dbfs is None and f.content_hash is None for f in report.files)
    assert "not analysed" in format_report(report)


def test_clean_dataset_is_ok(tmp_path, make_audio):
    make_audio(tmp_path / "a.wav", seconds=0.5)
    make_audio(tmp_path / "b.wav", seconds=0.5, frequency=220.0)
    dataset = Dataset("clean", [Sample("a.wav", caption="x", instrumental=True, bpm=90.0, keyscale="C major"),
                                Sample("b.wav", caption="y", instrumental=True, bpm=90.0, keyscale="C major")],
                      root=tmp_path)
    report = dataset_report(dataset)
    assert report.ok and report.missing == {"caption": [], "lyrics": [], "bpm": [], "key": []}
    assert "No unreadable, silent, clipped or duplicate files." in format_report(report)


# --- truncated files: headers say more than the file holds --------------------------------------


def _amen_folder(folder, real_loops):
    """good.flac (the whole loop), a truncated MP3 (40 % of its bytes, as a cut download leaves it)
    and an MP3 without a Xing frame whose header guesses a length seconds too long."""
    folder.mkdir()
    amen = real_loops["loop_amen_full"]
    shutil.copyfile(amen, folder / "good.flac")
    whole = ffmpeg_encode(amen, folder.parent / "whole.mp3", "-c:a", "libmp3lame", "-b:a", "192k")
    truncated_copy(whole, folder / "halfdownloaded.mp3", fraction=0.4)
    loop, rate = sf.read(amen, dtype="float32", always_2d=True)
    sf.write(folder.parent / "late.wav", np.concatenate([np.zeros((3 * rate, 2), np.float32), loop]), rate)
    ffmpeg_encode(folder.parent / "late.wav", folder / "no_xing.mp3", "-c:a", "libmp3lame", "-q:a", "0",
                  "-write_xing", "0")  # silence first: a low first bitrate, so a length estimate far too long
    return len(loop) / rate


def test_a_truncated_file_is_unreadable_and_durations_are_the_decoded_ones(tmp_path, real_loops):
    loop_seconds = _amen_folder(tmp_path / "songs", real_loops)
    built = build_dataset(tmp_path / "songs")  # headers only, for speed: the truncated file passes
    stated = {s.audio: s.duration for s in built.dataset.samples}
    assert built.failed == [] and stated["halfdownloaded.mp3"] == pytest.approx(loop_seconds, abs=0.01)
    assert stated["no_xing.mp3"] > loop_seconds + 3 + 2  # the header's guess

    report = dataset_report(built.dataset)

    assert [f.path.name for f in report.unreadable] == ["halfdownloaded.mp3"]
    reason = report.unreadable[0].reason
    assert reason.startswith(f"is truncated or damaged: its header says {loop_seconds:.1f} s (")
    assert "but only 2." in reason and reason.endswith("decode; re-download or re-export it")
    durations = {f.audio: f.duration for f in report.files}
    assert durations == {"good.flac": pytest.approx(loop_seconds),
                         "no_xing.mp3": pytest.approx(loop_seconds + 3, abs=0.06)}  # decoded, not guessed
    assert report.total_duration == pytest.approx(sum(durations.values()))
    assert not report.ok
    text = format_report(report)
    assert f"Unreadable (1):\n  {tmp_path / 'songs' / 'halfdownloaded.mp3'}: is truncated or damaged" in text
    assert "No unreadable" not in text

    headers_only = dataset_report(built.dataset, analyse_audio=False)  # no decode, so what the headers say
    assert {f.audio: f.duration for f in headers_only.files} == pytest.approx(stated)
    assert headers_only.unreadable == []


def test_folder_report_lists_the_files_the_build_left_out(tmp_path, make_audio):
    make_audio(tmp_path / "good.wav", seconds=0.5)
    make_audio(tmp_path / "other.wav", seconds=0.5, frequency=220.0)
    (tmp_path / "other.wav.txt").write_bytes(b"caf\xe9\n")  # Latin-1 lyrics
    (tmp_path / "empty.wav").touch()
    (tmp_path / "notes.mp3").write_text("not audio\n", encoding="utf-8")
    (tmp_path / "keys.csv").write_text("Title,BPM\nMy song,120\n", encoding="utf-8")  # no file column

    report = folder_report(tmp_path)

    assert report.count == 1 and [f.audio for f in report.files] == ["good.wav"]
    reasons = {f.path.name: f.reason for f in report.unreadable}
    assert list(reasons) == ["keys.csv", "empty.wav", "notes.mp3", "other.wav"]  # the CSV, then by path
    assert "has no file column" in reasons["keys.csv"]
    assert reasons["empty.wav"] == "file is empty (0 bytes); re-export or re-download it"
    assert reasons["notes.mp3"] == "is a text file, not audio (despite its .mp3 extension); remove it"
    assert reasons["other.wav"].endswith("other.wav.txt: lyrics sidecar is not UTF-8 text (byte 0xe9 at position 3); "
                                         "save it as UTF-8")
    assert not report.ok
    data = report.to_dict()
    assert [entry["audio"] for entry in data["unreadable"]] == [str(f.path) for f in report.unreadable]
    assert data["ok"] is False
    text = format_report(report)
    assert "Unreadable (4):" in text and f"  {tmp_path / 'notes.mp3'}: is a text file" in text
    assert "No unreadable" not in text
