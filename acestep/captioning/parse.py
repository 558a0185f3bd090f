"""Reading what the ACE-Step captioner and transcriber wrote into `Labels`.

The captioner (ACE-Step/acestep-captioner, prompt "*Task* Describe this audio in detail") writes
a prose style caption; its model card promises nothing else, so metadata is taken from the text
only where it is stated plainly ("in A minor", "at 120 BPM", "in 4/4", "Genre: synth-pop").
Other formats seen from Qwen2.5-Omni fine-tunes are read too: "Caption: ..." lines, markdown
headers and bullets, and JSON objects, fenced or cut off by the token limit.

The transcriber (ACE-Step/acestep-transcriber, prompt "*Task* Transcribe this audio in detail")
writes, per its model card::

    # Languages
    en

    # Lyrics
    [Intro - Acoustic Guitar]

    [Verse 1]
    Walking down the empty street tonight

Neither parser raises: text it cannot read is kept in `raw` with `parsed` false and a note, so a
batch never loses what a model said. Values are checked with `acestep.dataset.values`, the same
rules the dataset builder applies to sidecars.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from acestep.captioning.labels import Labels
from acestep.captioning.fields import FIELD_OF, apply_fields, fields_from_pairs, read_prose_metadata, set_language
from acestep.captioning.lyrics import has_sung_lines, is_instrumental_text, normalize_lyrics, section_tags
from acestep.dataset.sidecars import normalize_name

_FENCE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
_ROLE_PREFIX = re.compile(r"^\s*(?:assistant|<\|im_start\|>assistant)\s*[:\n]", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>", re.IGNORECASE)
# "- **Genre**: pop", "* Key = A minor", "1. Tempo: 96", "### BPM: 120"
_KEY_VALUE = re.compile(
    r"^\s*(?:[-*•]\s+|\d{1,2}[.)]\s+|#{1,6}\s*)?[*_]{0,2}(?P<key>[A-Za-z][A-Za-z /_()-]{0,28}?)[*_]{0,2}\s*"
    r"(?:[:：=]|\s[-–—]\s)[*_]{0,2}\s*(?P<value>.*?)\s*$"
)
_HEADER = re.compile(r"^\s*#{1,6}\s*[*_]{0,2}(?P<key>[A-Za-z][A-Za-z /_()-]{0,28}?)[*_]{0,2}\s*:?\s*$")
_JSON_PAIR = re.compile(r'"(?P<key>[^"\\]{1,40})"\s*:\s*(?P<value>"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)')


def parse_caption_output(text: str) -> Labels:
    """Labels from the captioner's text: the caption, and genre, bpm, key, time signature,
    language and instrumental where the text states them. Never raises."""
    labels = Labels(raw=text, source="captioner")
    cleaned = _clean(text)
    if not cleaned:
        return _unparsed(labels, "the model wrote nothing")
    fields, caption_parts, notes = _structured_fields(cleaned)
    labels.notes.extend(notes)
    apply_fields(labels, fields)
    prose = "\n".join(caption_parts).strip()
    caption = labels.caption or prose
    others = fields.get("_other", [])
    if others:  # "Instruments: ...", "Mood: ..." describe the style too: they join the caption
        caption = _join_sentences(caption, [f"{key}: {value}" for key, value in others])
        labels.notes.append("the caption includes " + ", ".join(key for key, _ in others))
    caption = _collapse_blank_lines(caption)
    if not _reads_as_text(caption) and not _has_metadata(labels):
        return _unparsed(labels, "the output does not read as text")
    labels.caption = caption if _reads_as_text(caption) else ""
    read_prose_metadata(labels, labels.caption)
    return labels


def parse_transcription_output(text: str) -> Labels:
    """Labels from the transcriber's text: lyrics with section tags on their own lines, the
    language code, and instrumental when no line is sung. Never raises."""
    labels = Labels(raw=text, source="transcriber")
    cleaned = _clean(text)
    if not cleaned:
        return _unparsed(labels, "the model wrote nothing")
    language_text, lyrics_text, found_header = _split_transcription(cleaned)
    if language_text:
        set_language(labels, language_text)
    lyrics = normalize_lyrics(lyrics_text)
    if is_instrumental_text(lyrics) or (lyrics and not has_sung_lines(lyrics) and section_tags(lyrics)):
        tags = section_tags(lyrics)
        labels.instrumental = True
        labels.lyrics = "[Instrumental]"
        labels.notes.append("no sung lines" + (f"; section tags were {', '.join(tags)}" if tags else ""))
        return labels
    if not lyrics:
        if found_header:
            labels.notes.append("the '# Lyrics' section is empty")
            labels.instrumental = True
            labels.lyrics = "[Instrumental]"
            return labels
        return _unparsed(labels, "no lyrics found")
    if not _reads_as_text(lyrics):
        labels.language = ""
        return _unparsed(labels, "the lyrics do not read as text")
    if not found_header and not section_tags(lyrics):
        labels.notes.append("no '# Lyrics' header and no section tags; the whole output was taken as lyrics")
    labels.lyrics = lyrics
    labels.instrumental = False
    return labels


# --- shared helpers ---


def _unparsed(labels: Labels, why: str) -> Labels:
    labels.parsed = False
    labels.notes.append(f"unparsed: {why}; the text is kept in raw")
    return labels


def _clean(text: str) -> str:
    """The model's text without a leading role name, chat special tokens and code fences."""
    text = unicodedata.normalize("NFC", text or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _SPECIAL_TOKEN.sub("", text)
    text = _ROLE_PREFIX.sub("", text, count=1)
    text = _FENCE.sub("", text)
    return text.strip()


def _join_sentences(text: str, sentences: list[str]) -> str:
    """"bright pop" + ["Mood: happy"] -> "bright pop. Mood: happy." """
    joined = ""
    for part in (part.strip() for part in [text, *sentences]):
        if part:
            joined += ("" if not joined else " " if joined.endswith((".", "!", "?")) else ". ") + part
    return joined if not joined or joined.endswith((".", "!", "?")) else joined + "."


def _collapse_blank_lines(text: str) -> str:
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


def _reads_as_text(text: str) -> bool:
    """Whether `text` is language rather than byte soup: mostly letters, few replacement or
    control characters. Works for any script (CJK letters count as letters)."""
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return False
    if len(visible) >= 8 and len(set(visible)) <= 2:  # "xxxxxxxx": a model stuck on one token
        return False
    letters = sum(1 for ch in visible if unicodedata.category(ch).startswith("L"))
    broken = sum(1 for ch in visible if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Co", "Cn"))
    return letters / len(visible) >= 0.5 and broken / len(visible) < 0.05


def _has_metadata(labels: Labels) -> bool:
    fields = ("genre", "bpm", "keyscale", "timesignature", "language")
    return any(getattr(labels, name) not in ("", None) for name in fields)


# --- captioner: structured formats ---


def _structured_fields(text: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """({field: value}, prose lines that are not fields, notes) from JSON or key/value text.
    Unknown keys ("Instruments", "Mood") are kept under "_other" as (name, value) pairs, but only
    when the text also has a known field: in plain prose "Overall: ..." is a sentence."""
    notes: list[str] = []
    start = text.find("{")
    if start != -1 and re.match(r"\{\s*\"", text[start:]) and text[:start].count("\n") <= 1:
        obj, complete = _json_object(text[start:])
        if obj:
            if not complete:
                notes.append("the JSON was cut off; the complete fields were read")
            return fields_from_pairs(obj.items()), [], notes
    rows: list[tuple[str, str, str]] = []  # (kind, key, value): kind is "known", "label" or "prose"
    header: str | None = None
    for line in text.split("\n"):
        if header_match := _HEADER.match(line):
            header = header_match.group("key")
            continue
        match = _KEY_VALUE.match(line)
        if match and match.group("value") and normalize_name(match.group("key")) in FIELD_OF:
            rows.append(("known", match.group("key"), match.group("value")))
            header = None
        elif match and match.group("value") and _looks_like_label(match.group("key")):
            rows.append(("label", match.group("key"), match.group("value")))
            header = None
        elif header is not None and line.strip():
            kind = "known" if normalize_name(header) in FIELD_OF else "label"
            rows.append((kind, header, line.strip()))
            if normalize_name(header) not in ("caption", "description"):  # a caption may run on
                header = None
        else:
            rows.append(("prose", "", re.sub(r"^\s*[-*•]\s+", "", line)))
    structured = any(kind == "known" for kind, _, _ in rows)
    pairs = [(key, value) for kind, key, value in rows if kind == "known" or (structured and kind == "label")]
    prose = [value if kind == "prose" else f"{key}: {value}" for kind, key, value in rows
             if kind == "prose" or (kind == "label" and not structured)]
    fields = fields_from_pairs(pairs)
    return fields, prose if "caption" not in fields else [], notes


def _looks_like_label(key: str) -> bool:
    """"Instruments", "Mood", "Vocal style": a short capitalised name, not a sentence with a colon."""
    words = key.split()
    return 1 <= len(words) <= 3 and key[:1].isupper()


def _json_object(text: str) -> tuple[dict[str, Any], bool]:
    """The first JSON object in `text` and whether it was complete; a cut-off object gives the
    fields that were written out in full."""
    decoder = json.JSONDecoder()
    try:
        obj, _ = decoder.raw_decode(text)
        if isinstance(obj, dict):
            return obj, True
    except ValueError:
        pass
    pairs = {}
    for match in _JSON_PAIR.finditer(text):
        try:
            pairs[match.group("key")] = json.loads(match.group("value"))
        except ValueError:
            continue
    return pairs, False


# --- transcriber ---


def _split_transcription(text: str) -> tuple[str, str, bool]:
    """(language text, lyrics text, whether a "# Lyrics" header was found)."""
    language = ""
    lines = text.split("\n")
    lyrics_start = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        lang = re.match(r"^(?:#{1,6}\s*)?\**languages?\**\s*[:：]?\s*(.*)$", stripped, re.IGNORECASE)
        if lang and not language:
            language = lang.group(1).strip() or _next_value(lines, index)
            continue
        if re.match(r"^(?:#{1,6}\s*)?\**lyrics?\**\s*[:：]?\s*$", stripped, re.IGNORECASE):
            lyrics_start = index + 1
            break
    if lyrics_start is not None:
        body = []
        for line in lines[lyrics_start:]:
            if re.match(r"^#\s+\S", line) and not re.match(r"^#\s+lyrics", line, re.IGNORECASE):
                break  # the next "# Section" of a structured answer
            body.append(line)
        return language, "\n".join(body), True
    body = [line for line in lines if not re.match(r"^(?:#{1,6}\s*)?\**languages?\**", line.strip(), re.IGNORECASE)]
    if language:  # drop the value line that followed a bare "# Languages" header
        body = _drop_first(body, language)
    return language, "\n".join(body), False


def _next_value(lines: list[str], index: int) -> str:
    for line in lines[index + 1:]:
        if line.strip():
            return "" if line.strip().startswith("#") else line.strip()
    return ""


def _drop_first(lines: list[str], value: str) -> list[str]:
    for index, line in enumerate(lines):
        if line.strip():
            return lines[index + 1:] if line.strip() == value else lines
    return lines
