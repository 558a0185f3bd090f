"""Labels stored next to an audio file: a `.txt` with its lyrics and a `.json` from a captioner.

Sidecars belong to one audio FILE, not to a stem, so `song.mp3` and `song.wav` in one folder
never share labels: `song.mp3.txt` / `song.mp3.json` are looked up first, and the plain
`song.txt` / `song.json` only when no other audio file in that folder has the stem `song`.
When both sidecars exist, the `.txt` lyrics win over lyrics in the `.json` (a person wrote them).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from acestep.dataset import values
from acestep.errors import DatasetError

# Our field -> the names other tools give it (compared case-insensitively, spaces and "-" as "_").
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "caption": ("caption", "description", "prompt"),
    "genre": ("genre", "genres", "tags"),
    "lyrics": ("lyrics",),
    "bpm": ("bpm", "tempo"),
    "keyscale": ("keyscale", "key", "key_scale"),
    "timesignature": ("timesignature", "time_signature", "ts"),
    "language": ("language", "lang", "vocal_language"),
    "instrumental": ("instrumental", "is_instrumental"),
}
ALIAS_TO_FIELD = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}
INSTRUMENTAL_MARK = "[instrumental]"


def normalize_name(name: str) -> str:
    """A column or key name as compared with the aliases: "Key Scale" -> "key_scale"."""
    return name.strip().casefold().replace(" ", "_").replace("-", "_")


def parse_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """Our metadata from {field: value as written}; empty values are left out.

    "[Instrumental]" as lyrics and "instrumental" as the language both mean an instrumental track.
    Raises ValueError naming the field ("bpm must be a number, found 'fast'").
    """
    parsed: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "bpm":
            result = values.parse_bpm(value)
        elif name == "instrumental":
            result = values.parse_bool(value, "instrumental")
        elif name == "lyrics":
            result = values.parse_lyrics(value)
        elif name == "language":
            if isinstance(value, str) and value.strip().casefold() == "instrumental":
                parsed["instrumental"] = True
                continue
            result = values.parse_metadata_language(value)
        else:
            result = values.parse_text(value, name, allow_number=name == "timesignature")
            if result is not None and name == "keyscale":
                result = values.normalize_keyscale(result)
            elif result is not None and name == "timesignature":
                result = values.normalize_timesignature(result)
        if result is not None:
            parsed[name] = result
    if parsed.get("lyrics", "").casefold() == INSTRUMENTAL_MARK:
        del parsed["lyrics"]
        parsed["instrumental"] = True
    return parsed


def sidecar_paths(audio_path: Path, folder_stems: Counter[str] | None = None) -> dict[str, Path]:
    """The existing sidecars of one audio file: {".txt": path, ".json": path} (either may be absent).

    `folder_stems` counts the stems of the audio files in the file's folder (read from the folder
    when None); a plain `stem.txt` is used only when one audio file has that stem.
    """
    if folder_stems is None:
        folder_stems = audio_stems(audio_path.parent)
    stem_is_shared = folder_stems[audio_path.stem] > 1
    found: dict[str, Path] = {}
    for extension in (".txt", ".json"):
        specific = audio_path.with_name(audio_path.name + extension)
        plain = audio_path.with_suffix(extension)
        if specific.is_file():
            found[extension] = specific
        elif not stem_is_shared and plain.is_file():
            found[extension] = plain
    return found


def audio_stems(folder: Path) -> Counter[str]:
    """How many audio files directly in `folder` have each stem (song.mp3 + song.wav -> song: 2)."""
    from acestep.audio.io import AUDIO_EXTENSIONS

    return Counter(p.stem for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def read_sidecars(audio_path: str | Path, folder_stems: Counter[str] | None = None) -> dict[str, Any]:
    """The labels in an audio file's sidecars: caption, genre, lyrics, bpm, keyscale,
    timesignature, language, instrumental (only those given).

    Raises DatasetError naming the sidecar for a `.txt` that is not UTF-8, a `.json` that is not
    valid JSON or not an object, or a value of the wrong kind (a bpm of "fast").
    """
    audio_path = Path(audio_path)
    paths = sidecar_paths(audio_path, folder_stems)
    metadata: dict[str, Any] = {}
    if ".json" in paths:
        metadata.update(_read_json_sidecar(paths[".json"]))
    if ".txt" in paths:
        metadata.update(_read_lyrics_sidecar(paths[".txt"]))
    return metadata


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        bad = error.object[error.start]
        raise DatasetError(
            f"{path}: {what} is not UTF-8 text (byte 0x{bad:02x} at position {error.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the {what} ({error.strerror or error})") from None


def _read_lyrics_sidecar(path: Path) -> dict[str, Any]:
    try:
        return parse_metadata({"lyrics": _read_text(path, "lyrics sidecar")})
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None


def _read_json_sidecar(path: Path) -> dict[str, Any]:
    text = _read_text(path, "captioner sidecar")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}: captioner sidecar is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except (ValueError, RecursionError) as error:
        raise DatasetError(f"{path}: captioner sidecar is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: captioner sidecar must hold a JSON object, found {values.kind(data)}")
    raw: dict[str, Any] = {}
    given_by: dict[str, str] = {}
    for key, value in data.items():
        name = ALIAS_TO_FIELD.get(normalize_name(key))
        if name is None or values.is_empty(value):
            continue  # other keys (duration, confidence, ...) are not labels
        if name in raw and raw[name] != value:
            raise DatasetError(
                f"{path}: {given_by[name]!r} and {key!r} both give the {name}, with different values; keep one"
            )
        raw[name], given_by[name] = value, key
    try:
        return parse_metadata(raw)
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None
