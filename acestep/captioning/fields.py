"""Field values in model output: which names mean which `Labels` field, how each value is
checked (with `acestep.dataset.values`, the rules the dataset builder applies to sidecars), and
metadata stated in a prose caption ("a 96 BPM groove in D minor").

A value that fails its check is left out and a note in `Labels.notes` says why; nothing raises.
"""

from __future__ import annotations

import re
from typing import Any

from acestep.captioning.labels import Labels
from acestep.captioning.lyrics import normalize_lyrics
from acestep.dataset import values
from acestep.dataset.languages import LANGUAGE_NAMES, parse_language
from acestep.dataset.sidecars import ALIAS_TO_FIELD, normalize_name

# Names models give fields beyond the sidecar aliases (compared after `normalize_name`).
_EXTRA_ALIASES = {
    "summary": "caption", "style_caption": "caption", "music_description": "caption", "overall": "caption",
    "genre_style": "genre", "genres_styles": "genre", "style": "genre", "styles": "genre",
    "tempo_bpm": "bpm", "beats_per_minute": "bpm", "bpm_tempo": "bpm",
    "musical_key": "keyscale", "scale": "keyscale", "tonality": "keyscale", "key_signature": "keyscale",
    "time": "timesignature", "meter": "timesignature", "time_sig": "timesignature",
    "languages": "language", "vocal_languages": "language", "lyrics_language": "language",
    "vocals": "vocals", "vocal": "vocals", "has_vocals": "vocals", "is_vocal": "vocals",
}
FIELD_OF = {**ALIAS_TO_FIELD, **_EXTRA_ALIASES}

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_KEY_IN_TEXT = re.compile(
    r"\b([A-Ga-g])\s?([#b♯♭]|\s?sharp|\s?flat)?\s?(major|minor|maj|min|m)\b(?!-key)", re.IGNORECASE
)
_TIME_SIGNATURE = re.compile(r"\b(1[0-2]|[2-9])\s?/\s?(2|4|8|16)\b")
# Metadata stated in prose. Patterns need context ("in", "key of", "BPM") so that "A minor-key
# ballad" or "a minor change" read as nothing.
_PROSE_KEY = re.compile(
    r"\b(?:in the key of|key of|in)\s+([A-G](?:#|b|♯|♭|\s(?:sharp|flat))?)[\s-]?(major|minor)\b(?!-key)"
)
_PROSE_BPM = re.compile(
    r"(?:(?:tempo|pace) of\s+(?:about|around|approximately|roughly|~)?\s*(\d{2,3}(?:\.\d+)?)\b)"
    r"|(?:\b(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b)", re.IGNORECASE
)
_PROSE_TIME = re.compile(
    r"\b(1[0-2]|[2-9])/(2|4|8|16)\b"
    r"(?=[\s-]*(?:time|meter|metre|signature|feel|groove|rhythm|waltz|swing|shuffle|pulse))", re.IGNORECASE
)
_PROSE_LANGUAGE = re.compile(
    r"\b(?:sung|sings|singing|rapped|raps|lyrics|vocals|performed|delivered)\s+(?:\w+\s+){0,2}?in\s+([A-Z][a-z]+)\b"
    r"|\b([A-Z][a-z]+)(?:-language)?\s+(?:lyrics|vocals|singing|rap)\b"
)
_PROSE_NO_VOCALS = re.compile(
    r"\b(?:instrumental (?:track|piece|song|music|composition|arrangement|work)|purely instrumental"
    r"|entirely instrumental|fully instrumental|no vocals|without (?:any )?vocals|no singing|devoid of vocals"
    r"|absence of vocals)\b", re.IGNORECASE
)
_GENRE_MAX_CHARS = 80
# "vocal chops" and "vocal samples" are sounds in an instrumental mix, not a sung part.
_PROSE_VOCALS = re.compile(
    r"\b(?:vocal(?:ist|s)?|singer|sings|singing|sung|rapper|rapping|lyrics|choir)\b"
    r"(?!-like|\s+(?:samples?|chops?|snippets?|textures?|pads?|effects?))", re.IGNORECASE
)


def fields_from_pairs(pairs) -> dict[str, Any]:
    """{field: raw value} from (name as written, value) pairs; names no field has are kept under
    "_other" as pairs, and so are descriptive values of known names ("Vocals: breathy female lead")."""
    fields: dict[str, Any] = {"_other": []}
    for key, value in pairs:
        field = FIELD_OF.get(normalize_name(str(key)))
        if field == "genre" and isinstance(value, str) and len(value) > _GENRE_MAX_CHARS:
            field = None  # "Style: a dreamy track that ..." is a description, not a genre tag list
        if field is None:
            if isinstance(value, (str, int, float)) and str(value).strip():
                fields["_other"].append((str(key).strip(), str(value).strip()))
            continue
        if field == "vocals" and isinstance(value, str) and len(value.split()) > 1 and _no_vocals(value) is False:
            fields["_other"].append((str(key).strip(), value.strip()))  # "Breathy female lead" describes the style
        if field == "caption" and "caption" in fields and isinstance(value, str):
            fields["caption"] = f"{fields['caption']}\n{value.strip()}"
        else:
            fields.setdefault(field, value)
    return fields


def apply_fields(labels: Labels, fields: dict[str, Any]) -> None:
    """Set each field of `labels` from a raw value; a value that fails its check becomes a note."""
    for field, value in fields.items():
        if field == "_other" or value is None:
            continue
        try:
            if field == "caption":
                labels.caption = values.parse_text(value, "caption") or ""
            elif field == "genre":
                labels.genre = (values.parse_text(value, "genre", allow_number=False) or "").rstrip(".")
            elif field == "bpm":
                labels.bpm = _bpm(value)
            elif field == "keyscale":
                labels.keyscale = _keyscale(value)
            elif field == "timesignature":
                labels.timesignature = _time_signature(value)
            elif field == "language":
                set_language(labels, str(value))
            elif field == "instrumental":
                labels.instrumental = _instrumental(value)
            elif field == "vocals":
                labels.instrumental = _no_vocals(value)
            elif field == "lyrics":
                labels.lyrics = normalize_lyrics(str(value))
        except ValueError as exc:
            labels.notes.append(f"{field} ignored: {exc}")


def _bpm(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return values.parse_bpm(value)
    match = _NUMBER.search(str(value))
    if not match:
        raise ValueError(f"bpm must be a number, found {values.show(value)}")
    return values.parse_bpm(match.group(0).replace(",", "."))


def _keyscale(value: Any) -> str:
    text = str(value).strip()
    whole = values.normalize_keyscale(text)
    if re.fullmatch(r"[A-G][#b♯♭]? (major|minor)", whole):
        return whole
    match = _KEY_IN_TEXT.search(text)
    if match:
        note, accidental, mode = match.groups()
        accidental = {"sharp": "#", "flat": "b"}.get((accidental or "").strip().lower(), (accidental or "").strip())
        if note.islower() and mode.lower() == "m":  # "am" is the article and a word, not A minor
            raise ValueError(f"key must be a note and major/minor, found {values.show(value)}")
        return values.normalize_keyscale(f"{note.upper()}{accidental}{mode}")
    raise ValueError(f"key must be a note and major/minor (\"A minor\", \"F# major\"), found {values.show(value)}")


def _time_signature(value: Any) -> str:
    text = str(value).strip()
    match = _TIME_SIGNATURE.search(text)
    if match:
        return values.normalize_timesignature(f"{match.group(1)}/{match.group(2)}")
    if re.fullmatch(r"\d{1,2}", text):
        return text
    if "common time" in text.lower():
        return "4"
    raise ValueError(f"time signature must look like 4/4 or 4, found {values.show(value)}")


def set_language(labels: Labels, text: str) -> None:
    """The first ACE-Step language code in `text` ("en", "English", "zh, en"); a note names the
    others and anything that is not a language."""
    words = [word for word in re.split(r"[,/;|&+\s]+|\band\b", text.strip()) if word]
    codes = []
    for word in [text.strip(), *words]:
        try:
            code = parse_language(word.strip(" .()[]\"'"))
        except ValueError:
            continue
        if code not in codes:
            codes.append(code)
        if word == text.strip():
            break
    if not codes:
        if text.strip().casefold() in ("instrumental", "none", "no vocals", "n/a"):
            labels.instrumental = True
            return
        labels.notes.append(f"language ignored: {text.strip()[:40]!r} is not one of the ACE-Step languages")
        return
    labels.language = codes[0]
    if len(codes) > 1:
        labels.notes.append(f"several languages ({', '.join(codes)}); kept {codes[0]}")


def _instrumental(value: Any) -> bool | None:
    if isinstance(value, str) and value.strip().casefold() in ("instrumental", "no vocals", "none"):
        return True
    return values.parse_bool(value, "instrumental")


def _no_vocals(value: Any) -> bool | None:
    """"Vocals: none" means instrumental; "Vocals: breathy female lead" means it is not."""
    if isinstance(value, bool):
        return not value
    text = str(value).strip().casefold()
    if text in ("", "n/a"):
        return None
    if text in ("none", "no", "false", "0", "instrumental", "no vocals") or text.startswith(("none", "no vocal")):
        return True
    return False


# --- metadata stated in prose ---


def read_prose_metadata(labels: Labels, text: str) -> None:
    """Fill fields still empty from plain statements in the caption ("a 96 BPM groove in D minor")."""
    if labels.bpm is None and (match := _PROSE_BPM.search(text)):
        try:
            labels.bpm = values.parse_bpm(match.group(1) or match.group(2))
        except ValueError as exc:
            labels.notes.append(f"bpm in the caption ignored: {exc}")
    if not labels.keyscale and (match := _PROSE_KEY.search(text)):
        note = match.group(1).replace(" sharp", "#").replace(" flat", "b")
        labels.keyscale = values.normalize_keyscale(f"{note} {match.group(2)}")
    if not labels.timesignature and (match := _PROSE_TIME.search(text)):
        labels.timesignature = values.normalize_timesignature(f"{match.group(1)}/{match.group(2)}")
    if not labels.language:
        for match in _PROSE_LANGUAGE.finditer(text):
            name = (match.group(1) or match.group(2) or "").casefold()
            code = next((code for code, english in LANGUAGE_NAMES.items() if english.casefold() == name), None)
            if code:
                labels.language = code
                break
    if labels.instrumental is None:
        if _PROSE_NO_VOCALS.search(text):
            labels.instrumental = True
        elif _PROSE_VOCALS.search(text):
            labels.instrumental = False
