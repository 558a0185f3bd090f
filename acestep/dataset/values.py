"""Reading one metadata value written by a person or another tool (sidecar, CSV, old dataset JSON).

Each parser takes the raw value and returns ours, or raises ValueError whose message names the
field and what was found ("bpm must be a number, found 'fast'"); callers prefix the file, row or
sample. An empty value (None, "", "N/A") means "not given" and comes back as None, so a source
that leaves a field blank never overwrites one that filled it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from acestep.dataset.languages import parse_language

BPM_MIN = 0.0  # exclusive
BPM_MAX = 400.0  # exclusive
_EMPTY = {"", "n/a", "na", "none", "null", "-"}
_TRUE = {"true", "yes", "y", "1", "x"}
_FALSE = {"false", "no", "n", "0"}

# Short key names from key-detection tools ("Am", "F#", "Bbmin") -> the model's "A minor" form.
_KEY = re.compile(r"^([A-Ga-g])([#b♯♭]?)\s*((?i:minor|min|m|major|maj))?$")
# Time signatures the model knows are written as the beats per bar ("4"), as upstream's LM does.
_TIME_SIGNATURES = {"2/4": "2", "3/4": "3", "4/4": "4", "6/8": "6"}


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().casefold() in _EMPTY)


def check_bpm(value: float) -> float:
    """`value` if it is a usable tempo (finite, above 0, below 400), else ValueError."""
    if not math.isfinite(value) or not BPM_MIN < value < BPM_MAX:
        raise ValueError(f"bpm must be above {BPM_MIN:g} and below {BPM_MAX:g}, found {show(value)}")
    return float(value)


def parse_bpm(value: Any) -> float | None:
    """A tempo from a number or a numeric string ("120", "120.5", "120 BPM"); None if empty."""
    if is_empty(value):
        return None
    if isinstance(value, bool):
        raise ValueError(f"bpm must be a number, found {show(value)}")
    if isinstance(value, (int, float)):
        try:
            return check_bpm(float(value))
        except OverflowError:
            raise ValueError(f"bpm must be above {BPM_MIN:g} and below {BPM_MAX:g}, found {show(value)}") from None
    if isinstance(value, str):
        text = value.strip()
        text = re.sub(r"\s*bpm$", "", text, flags=re.IGNORECASE)
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"bpm must be a number, found {show(value)}") from None
        return check_bpm(number)
    raise ValueError(f"bpm must be a number, found {show(value)}")


def parse_bool(value: Any, field: str) -> bool | None:
    """true/false from a boolean, 0/1, or yes/no/true/false/y/n/x text; None if empty."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().casefold()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if text in _EMPTY:
            return None
    if value is None:
        return None
    raise ValueError(f"{field} must be true or false (yes/no, 1/0), found {show(value)}")


def parse_text(value: Any, field: str, allow_number: bool = False) -> str | None:
    """Stripped text; None if empty. A list of strings (genre tags) is joined with ", "."""
    if is_empty(value):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        joined = ", ".join(item.strip() for item in value if item.strip())
        return joined or None
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text, found {show(value)}")
    return value.strip()


def parse_lyrics(value: Any) -> str | None:
    """Lyrics keep their line breaks (as "\n", whatever the file used); only surrounding blank
    space goes."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"lyrics must be text, found {show(value)}")
    return unix_line_breaks(value).strip()


def unix_line_breaks(text: str) -> str:
    """`text` with Windows ("\r\n") and old Mac ("\r") line breaks written as "\n": the
    tokenizer would otherwise encode each "\r" into the prompt, which lyrics typed at inference
    never have."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalize_keyscale(text: str) -> str:
    """"Am" -> "A minor", "F#" -> "F# major"; anything not recognised is kept as written."""
    match = _KEY.match(text.strip())
    if not match:
        return text.strip()
    note, accidental, mode = match.groups()
    if mode is None:
        # "Bb" is B-flat major; a lone lowercase "b" is the note B.
        mode = "major"
    scale = "minor" if mode.casefold() in ("m", "min", "minor") else "major"
    return f"{note.upper()}{accidental} {scale}"


def normalize_timesignature(text: str) -> str:
    """"4/4" -> "4", "6/8" -> "6" (the model's form); other values are kept as written."""
    return _TIME_SIGNATURES.get(text.strip().replace(" ", ""), text.strip())


def parse_metadata_language(value: Any) -> str | None:
    """A language code from a code or name (see `parse_language`); None if empty."""
    if is_empty(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"language must be text, found {show(value)}")
    return parse_language(value)


def show(value: Any) -> str:
    """A value as the user wrote it, shortened for a message: 'fast', null, true, {...}."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def kind(value: Any) -> str:
    """What sort of JSON value this is, in words: "an object", "a list", "text", "null"..."""
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number" if isinstance(value, (int, float)) else type(value).__name__
