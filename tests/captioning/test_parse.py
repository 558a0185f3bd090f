"""Tests for acestep/captioning/parse.py and lyrics.py: a corpus of captioner and transcriber
outputs in the formats these models and their peers write, with the labels each must give."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acestep.captioning.labels import Labels
from acestep.captioning.lyrics import normalize_lyrics, section_tags
from acestep.captioning.parse import parse_caption_output, parse_transcription_output

OUTPUTS = Path(__file__).parent / "data" / "outputs"
EXPECTED = json.loads((OUTPUTS / "expected.json").read_text(encoding="utf-8"))
FIELDS = ("caption", "genre", "bpm", "keyscale", "timesignature", "language", "lyrics", "instrumental", "parsed")


def _read(name: str) -> str:
    """The file exactly as written (read_text would turn the CRLF file's line ends into LF)."""
    return (OUTPUTS / name).read_bytes().decode("utf-8")


def _parse(name: str) -> Labels:
    text = _read(name)
    parser = parse_caption_output if EXPECTED[name]["parser"] == "caption" else parse_transcription_output
    return parser(text)


def test_corpus_is_complete():
    assert "\r\n" in _read("caption_windows_newlines.txt"), "one output keeps Windows line ends"
    files = sorted(path.name for path in OUTPUTS.glob("*.txt"))
    assert len(files) >= 15
    assert files == sorted(EXPECTED)
    kinds = {EXPECTED[name]["parser"] for name in files}
    assert kinds == {"caption", "transcription"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_output(name):
    expected = EXPECTED[name]
    labels = _parse(name)
    raw = _read(name)
    assert labels.raw == raw, "the model's text is always kept as written"
    assert labels.source == ("captioner" if expected["parser"] == "caption" else "transcriber")
    for field in FIELDS:
        if field in expected:
            assert getattr(labels, field) == expected[field], f"{name}: {field}"
    if "caption_startswith" in expected:
        assert labels.caption.startswith(expected["caption_startswith"])
    if "caption_endswith" in expected:
        assert labels.caption.endswith(expected["caption_endswith"])
    for fragment in expected.get("notes_contain", []):
        assert any(fragment in note for note in labels.notes), f"{name}: no note mentions {fragment!r}: {labels.notes}"


def test_unparsed_output_is_flagged_and_kept():
    labels = parse_caption_output("\x00\x01\ufffd\ufffd##")
    assert labels.parsed is False
    assert labels.raw == "\x00\x01\ufffd\ufffd##"
    assert labels.caption == ""
    assert labels.sidecar() == {}, "junk never reaches a sidecar field"


def test_keys_in_many_spellings():
    for text, key in [("Key: Am", "A minor"), ("key_scale: F# Major", "F# major"), ("Keyscale: A min", "A minor"),
                      ("Key: Bb", "Bb major"), ("Key: E flat minor", "Eb minor"),
                      ("Musical key: G major (bright)", "G major"), ("Tonality: c# minor", "C# minor")]:
        assert parse_caption_output(text).keyscale == key, text


def test_bpm_in_many_spellings():
    for text, bpm in [("BPM: 120", 120.0), ("Tempo: 96", 96.0), ("tempo: ~128", 128.0), ("BPM: 120 BPM", 120.0),
                      ("Tempo: around 92.5 bpm", 92.5), ('{"bpm": "140"}', 140.0)]:
        assert parse_caption_output(text).bpm == bpm, text
    labels = parse_caption_output("BPM: 900")
    assert labels.bpm is None and any("bpm" in note for note in labels.notes)


def test_time_signatures_become_the_numerator():
    for text, value in [("Time signature: 4/4", "4"), ("Meter: 3/4", "3"), ("time_signature: 6/8", "6"),
                        ("Time signature: 4", "4"), ("Time: common time", "4"), ("Time signature: 7/8", "7/8")]:
        assert parse_caption_output(text).timesignature == value, text


def test_languages_by_name_or_code():
    for text, code in [("Language: English", "en"), ("Language: JA", "ja"), ("Languages: Chinese", "zh"),
                       ("Vocal language: Spanish, English", "es")]:
        assert parse_caption_output(text).language == code, text


def test_instrumental_flags():
    assert parse_caption_output("Genre: Ambient\nInstrumental: yes").instrumental is True
    assert parse_caption_output("Genre: Ambient\nVocals: none").instrumental is True
    assert parse_caption_output("Genre: Pop\nVocals: female lead").instrumental is False
    assert parse_caption_output("A techno track with vocal chops and a rolling bassline.").instrumental is None


def test_prose_does_not_invent_keys():
    labels = parse_caption_output("A minor-key ballad where a minor change in the bridge lifts the mood.")
    assert labels.keyscale == ""
    assert parse_caption_output("The song moves in G major with a 3/4 waltz feel.").timesignature == "3"


def test_a_long_style_line_is_a_description_not_a_genre():
    style = "a dreamy bedroom-pop track with hazy guitars, a soft drum machine and whispered vocals"
    labels = parse_caption_output(f"Style: {style}\nBPM: 90")
    assert labels.genre == "" and labels.bpm == 90.0
    assert labels.caption == f"Style: {style}."
    assert parse_caption_output("Style: Synthwave, retrowave\nBPM: 90").genre == "Synthwave, retrowave"


def test_prose_with_a_colon_stays_prose():
    labels = parse_caption_output("Genre-bending: a mix of jazz and trap, led by a female singer.")
    assert labels.caption == "Genre-bending: a mix of jazz and trap, led by a female singer."
    assert labels.genre == ""


def test_normalize_lyrics_tags_timestamps_and_blank_lines():
    text = "[00:01.00][verse 1] One line   \n[00:02.50]Two line\n\n\n\nChorus:\nThree [Bridge] four\n[ar:Someone]\n"
    assert normalize_lyrics(text) == "[Verse 1]\nOne line\nTwo line\n\n[Chorus]\nThree\n\n[Bridge]\nfour"


def test_normalize_lyrics_keeps_words_that_start_like_sections():
    text = "[Verse]\nBreak my heart again\nIntro to the night\nHook, line and sinker\n[laughs] oh"
    assert normalize_lyrics(text) == text


def test_normalize_lyrics_is_idempotent_on_the_corpus():
    for name, expected in EXPECTED.items():
        if expected["parser"] == "transcription" and expected.get("lyrics"):
            assert normalize_lyrics(expected["lyrics"]) == expected["lyrics"], name


def test_section_tags_in_order():
    lyrics = _parse("lyrics_card_format.txt").lyrics
    assert section_tags(lyrics) == ["[Intro - Acoustic Guitar]", "[Verse 1]", "[Chorus]"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_parsers_never_raise_and_keep_the_text(text):
    for parser in (parse_caption_output, parse_transcription_output):
        labels = parser(text)
        assert isinstance(labels, Labels)
        assert labels.raw == text
        if not labels.parsed:
            assert labels.caption == "" and labels.lyrics == ""


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["# Languages", "# Lyrics", "en", "[Verse]", "[Chorus] la la", "Key: Am", "BPM: 12x",
                                 "{\"bpm\": 1", "```json", "Caption:", "- **Genre**:", "\u4f60\u597d", "\n", ""]),
                max_size=12))
def test_parsers_survive_fragments_of_real_formats(lines):
    text = "\n".join(lines)
    for parser in (parse_caption_output, parse_transcription_output):
        labels = parser(text)
        assert labels.raw == text
        assert labels.bpm is None or 0 < labels.bpm < 400
