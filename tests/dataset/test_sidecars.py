"""Sidecar labels written on other systems: line breaks from Windows and old Macs."""

import json

import pytest

from acestep.dataset.sidecars import read_sidecars


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_lyrics_sidecar_line_breaks_become_newlines(tmp_path, newline):
    audio = tmp_path / "song.wav"
    audio.write_bytes(b"")  # read_sidecars reads only the sidecars
    (tmp_path / "song.wav.txt").write_bytes(newline.join(["[Verse]", "First line", "Second line", ""]).encode())
    assert read_sidecars(audio)["lyrics"] == "[Verse]\nFirst line\nSecond line"


def test_sidestep_and_json_lyrics_line_breaks_become_newlines(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    (tmp_path / "a.wav.txt").write_bytes(b"caption: warm\r\nlyrics:\r\n[Chorus]\r\nHey\r\n")
    assert read_sidecars(audio)["lyrics"] == "[Chorus]\nHey"
    other = tmp_path / "b.wav"
    other.write_bytes(b"")
    (tmp_path / "b.wav.json").write_text(json.dumps({"caption": "x", "lyrics": "one\r\ntwo\rthree"}))
    assert read_sidecars(other)["lyrics"] == "one\ntwo\nthree"
