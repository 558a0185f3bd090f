"""Checking and parsing one training-config value: the type rules behind `acestep.training.config`.

A field's type is one of `BASES`, optionally unset ("X | None"). `coerce` checks a decoded
value (TOML, JSON, the UI) strictly: TOML has real types, so "1e-4" in quotes is not a number.
`parse_text` reads the text of a `--set` override by the field's type. Both raise `Invalid`, whose
message names the field path, the value found and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Iterable, NamedTuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

BASES = ("bool", "int", "float", "str", "list[float]", "list[str]", "int | str")
NONE_WORDS = ("none", "null")
_INT_LIMIT = 2**63  # TOML integers are 64-bit
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_WANTED = {
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "list[float]": "a list of numbers",
    "list[str]": "a list of text",
    "int | str": 'a whole number or text ("auto", "0,1")',
}


class FieldType(NamedTuple):
    base: str  # one of BASES
    optional: bool

    @classmethod
    def from_annotation(cls, annotation: str) -> FieldType:
        """The type of a dataclass field annotated (as a string) "float", "int | None", ..."""
        optional = annotation.endswith(" | None")
        base = annotation.removesuffix(" | None")
        if base not in BASES:
            raise TypeError(f"config field type {annotation!r} has no parser")  # a new type needs one
        return cls(base, optional)

    def __str__(self) -> str:
        return self.base + (" | None" if self.optional else "")


class Invalid(ValueError):
    """One malformed value; `path` is the field ("" when the key itself is unknown)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def coerce(value: Any, ftype: FieldType, path: str, *, text_none: bool) -> Any:
    """`value` as the field stores it (ints become floats for float fields), or Invalid.

    None is unset for an optional field; with `text_none`, so is the text "none" or "null"
    (a TOML file's only way to say it). Numbers must be finite and whole numbers fit 64 bits.
    """
    if ftype.optional and (value is None or (text_none and _is_none_word(value))):
        return None
    if ftype.optional and _is_none_word(value):  # set in code: it would be read back from a file as unset
        raise Invalid(path, f"{path} is {show(value)}, which a config file reads as unset: use None to "
                            f"unset it (or \"./{value.strip()}\" for a folder of that name)")
    base = ftype.base
    if base == "bool" and isinstance(value, bool):
        return value
    if base in ("int", "int | str") and is_int(value):
        if abs(value) >= _INT_LIMIT:
            raise Invalid(path, f"{path} must be a whole number that fits in 64 bits, found {show(value)}")
        return value
    if base == "float" and is_number(value):
        return _finite(value, path)
    if base in ("str", "int | str") and isinstance(value, str):
        return value
    if base.startswith("list[") and isinstance(value, list):
        item_type = FieldType(base[len("list["):-1], False)
        try:
            return [coerce(item, item_type, path, text_none=False) for item in value]
        except Invalid:
            pass
    raise Invalid(path, _wrong_type(value, ftype, path))


def parse_text(text: str, ftype: FieldType, path: str) -> Any:
    """The value of a `--set` override's text for a field of type `ftype` (checked by `coerce`)."""
    stripped = text.strip()
    if ftype.optional and _is_none_word(stripped):
        return None
    base = ftype.base
    try:
        if base == "str":
            return text
        if base == "bool" and stripped.casefold() in _TRUE + _FALSE:
            return stripped.casefold() in _TRUE
        if base == "int":
            return int(stripped)
        if base == "float":
            return float(stripped)
        if base == "int | str":
            if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
                return stripped[1:-1]  # quoted: "1" is GPU 1, not one device
            return int(stripped) if stripped.lstrip("+-").isdecimal() else stripped
        if base.startswith("list["):
            return _parse_list(stripped, FieldType(base[len("list["):-1], False), path)
    except ValueError:
        pass
    raise Invalid(path, f"{path} must be {_wanted(ftype)}, found {show(text)}")


def check_rules(value: Any, meta: dict[str, Any], path: str) -> str | None:
    """The problem with `value` against the field's `choices` and bounds, or None."""
    if value is None:
        return None
    choices = meta.get("choices")
    if choices and value not in choices:
        close = suggest(str(value), choices)
        hint = f"; did you mean {close}?" if close else ""
        return f"{path} must be one of {', '.join(choices)}, found {show(value)}{hint}"
    low_ok = ("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
    high_ok = ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"])
    if not (low_ok and high_ok):
        return f"{path} must be {bounds_text(meta)}, found {show(value)}"
    return None


def bounds_text(meta: dict[str, Any]) -> str:
    """The allowed range in words: "at least 1", "more than 0", "from 0 to 0.5", or ""."""
    if "ge" in meta and "le" in meta:
        return f"from {meta['ge']} to {meta['le']}"
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    return " and ".join(f"{words[key]} {meta[key]}" for key in words if key in meta)


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate a mistyped `name` most likely meant: one it begins ("adamw8" -> adamw8bit,
    "bf16" -> bf16-mixed), else the closest by spelling, else None."""
    candidates = list(candidates)
    if len(name) >= 2:
        for candidate in candidates:
            if candidate.casefold().startswith(name.casefold()) and candidate != name:
                return candidate
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def show(value: Any) -> str:
    """A short rendering of a value for a message: none, true, 3, 1e-05, 'text', [0.9, 0.9]."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_int(value) and value.bit_length() > 64:
        return "a whole number too large"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # huge ints inside a list, absurd nesting
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_none_word(value: Any) -> bool:
    return isinstance(value, str) and value.strip().casefold() in NONE_WORDS


def _finite(value: int | float, path: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise Invalid(path, f"{path} must be a finite number, found {show(value)}")
    return number


def _wanted(ftype: FieldType) -> str:
    wanted = _WANTED[ftype.base]
    return f'{wanted}, or "none" to unset it' if ftype.optional else wanted


def _wrong_type(value: Any, ftype: FieldType, path: str) -> str:
    message = f"{path} must be {_wanted(ftype)}, found {show(value)}"
    if isinstance(value, str) and ftype.base in ("bool", "int", "float", "list[float]"):
        try:
            coerce(parse_text(value, ftype, path), ftype, path, text_none=False)
        except Invalid:
            return message
        return f"{message} (text): write it without quotes"
    return message


def _parse_list(text: str, item_type: FieldType, path: str) -> list[Any]:
    """A TOML or JSON array ("[0.9, 0.95]", '["q_proj"]') or a comma list ("q_proj,v_proj")."""
    if text.startswith("["):
        for parse in (lambda: tomllib.loads(f"value = {text}")["value"], lambda: json.loads(text)):
            try:
                items = parse()
            except (ValueError, RecursionError):
                continue
            if isinstance(items, list):
                return items
        text = text[1:-1] if text.endswith("]") else text[1:]  # [q_proj, v_proj]: words unquoted
    return [parse_text(part.strip(), item_type, path) for part in text.split(",") if part.strip()]
