"""The data commands from the command line: `report` on an audio folder and on a dataset file lists
every file that cannot be used, with the reason, and exits 2 as `build` does for the same files."""

import json
import shutil

import numpy as np
import soundfile as sf
from audio.media import ffmpeg_encode, truncated_copy

from acestep.cli import main


def _write_tone(path, frequency, seconds=1.0, rate=48_000):
    tone = 0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)
    sf.write(path, np.stack([tone, tone], axis=1), rate)


def test_report_on_a_folder_lists_the_files_build_leaves_out_and_exits_2(tmp_path, capsys):
    folder = tmp_path / "b"
    folder.mkdir()
    _write_tone(folder / "good.wav", 220.0)
    _write_tone(folder / "other.wav", 330.0)
    (folder / "other.wav.txt").write_bytes(b"caf\xe9\n")  # Latin-1 lyrics
    (folder / "empty.wav").touch()
    (folder / "notes.mp3").write_text("not audio\n", encoding="utf-8")

    assert main(["build", str(folder), "--out", str(tmp_path / "ds.json")]) == 2
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "Dataset 'b': 1 sample, 0:01 of audio in 1 readable file(s)"
    unreadable = text.split("Unreadable (3):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert unreadable == [
        f"  {folder / 'empty.wav'}: file is empty (0 bytes); re-export or re-download it",
        f"  {folder / 'notes.mp3'}: is a text file, not audio (despite its .mp3 extension); remove it",
        f"  {folder / 'other.wav'}: {folder / 'other.wav.txt'}: lyrics sidecar is not UTF-8 text (byte 0xe9 at "
        "position 3); save it as UTF-8",
    ]

    assert main(["report", str(folder), "--json", "--no-audio"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert [entry["audio"] for entry in data["unreadable"]] == [str(folder / name)
                                                               for name in ("empty.wav", "notes.mp3", "other.wav")]
    assert data["ok"] is False and data["count"] == 1

    for name in ("other.wav.txt", "empty.wav", "notes.mp3"):
        (folder / name).unlink()
    assert main(["report", str(folder)]) == 0
    assert "No unreadable, silent, clipped or duplicate files." in capsys.readouterr().out


def test_report_on_a_dataset_names_a_truncated_file_and_exits_2(tmp_path, capsys, real_loops):
    folder = tmp_path / "c"
    folder.mkdir()
    shutil.copyfile(real_loops["loop_amen_full"], folder / "good.flac")
    whole = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / "whole.flac", "-c:a", "flac")
    truncated_copy(whole, folder / "cut.flac", fraction=0.4)
    dataset = folder / "ds.json"

    assert main(["build", str(folder), "--out", str(dataset)]) == 0  # headers only: the cut is not seen yet
    capsys.readouterr()
    assert main(["report", str(dataset)]) == 2
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "Dataset 'c': 2 samples, 0:07 of audio in 1 readable file(s)"
    assert f"Unreadable (1):\n  {folder / 'cut.flac'}: is truncated or damaged: its header says 6.9 s (" in text
    assert "re-download or re-export it" in text

    assert main(["report", str(dataset), "--no-audio"]) == 0  # the headers alone cannot tell
    assert "not analysed" in capsys.readouterr().out
