"""The 5 Hz LM understand prompt's pieces and the reader of its answers, on a corpus of realistic
outputs (the official <think> format, wrapped and quoted captions, missing fields, junk,
truncated text, codes after the description)."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acestep.captioning.labels import Labels
from acestep.captioning.lm_prompt import (
    SYSTEM_PROMPT,
    codes_in,
    codes_text,
    parse_lm_output,
    read_fields,
    understanding_messages,
)

CORPUS = Path(__file__).parent / "data" / "lm_outputs"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


def test_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.glob("*.txt")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 8


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_output_is_read_as_expected(name):
    text = (CORPUS / name).read_text(encoding="utf-8")
    labels = parse_lm_output(text)
    expected = EXPECTED[name]
    assert labels.raw == text and labels.source == "lm"
    for field in ("caption", "genre", "keyscale", "timesignature", "language", "lyrics", "instrumental", "parsed"):
        if field in expected:
            assert getattr(labels, field) == expected[field], field
    if "bpm" in expected:
        assert labels.bpm == (None if expected["bpm"] is None else float(expected["bpm"]))
    for field in ("caption", "lyrics"):
        assert getattr(labels, field).startswith(expected.get(f"{field}_starts", ""))
        assert getattr(labels, field).endswith(expected.get(f"{field}_ends", ""))
    if "notes" in expected:
        assert labels.notes == expected["notes"]
    for fragment in expected.get("notes_contain", []):
        assert any(fragment in note for note in labels.notes), (fragment, labels.notes)


def test_sidecar_of_an_instrumental_answer_has_no_lyrics_and_no_unknown_language():
    labels = parse_lm_output((CORPUS / "02_official_instrumental.txt").read_text(encoding="utf-8"))
    sidecar = labels.sidecar()
    assert sidecar["is_instrumental"] is True
    assert "lyrics" not in sidecar and "language" not in sidecar
    assert sidecar["bpm"] == 78.0 and sidecar["keyscale"] == "D♭ major"


def test_short_key_names_and_time_signatures_use_the_dataset_normalisers():
    labels = parse_lm_output("<think>\nkeyscale: F#m\ntimesignature: 6/8\nlanguage: English\nbpm: 99 BPM\n</think>")
    assert (labels.keyscale, labels.timesignature, labels.language, labels.bpm) == ("F# minor", "6", "en", 99.0)


def test_folded_yaml_caption_and_all_indented_block():
    assert read_fields("caption: >-\n  Folded caption\n  on two lines\nbpm: 70") == {
        "caption": "Folded caption on two lines", "bpm": "70"}
    assert read_fields("  bpm: 90\n  caption: one\n    two") == {"bpm": "90", "caption": "one two"}


def test_answer_stops_at_the_end_of_turn_token():
    labels = parse_lm_output("<think>\nbpm: 90\n</think>\n[Verse]\nla la<|im_end|>\n<think>\nbpm: 200\n</think>")
    assert labels.bpm == 90.0 and labels.lyrics == "[Verse]\nla la"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/|:#-\n bpmcaptionkeyscale0123456789[]thinkéλ♭'\"")), max_size=200))
def test_reader_never_raises(text):
    labels = parse_lm_output(text)
    assert isinstance(labels, Labels) and labels.raw == text
    assert labels.parsed or labels.notes


def test_codes_are_written_as_tokens_back_to_back():
    assert codes_text([0, 17, 63999]) == "<|audio_code_0|><|audio_code_17|><|audio_code_63999|>"
    assert codes_in("x<|audio_code_5|>\n<|audio_code_63999|>y") == [5, 63999]
    with pytest.raises(ValueError, match="0..63999"):
        codes_text([64000])
    with pytest.raises(ValueError, match="0..63999"):
        codes_text([-1])


def test_messages_are_the_official_understand_chat():
    messages = understanding_messages([3, 1])
    assert messages == [
        {"role": "system", "content": "# Instruction\nUnderstand the given musical conditions and describe the "
                                      "audio semantics accordingly:\n\n"},
        {"role": "user", "content": "<|audio_code_3|><|audio_code_1|>"},
    ]
    assert messages[0]["content"] == SYSTEM_PROMPT
