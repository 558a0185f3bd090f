"""Labels stored next to an audio file: a `.txt` with its lyrics and a `.json` from a captioner.

A `.txt` written by Side-Step (another ACE-Step trainer) holds labels too: `name: value` lines
(`caption`, `genre`, `bpm`, `key`, `signature`, ...) and then the lyrics after a `lyrics:` line.
It is read as labels only when its first non-empty line is such a line with a name we know and,
without a `lyrics:` line, every line is; any other `.txt` is lyrics.

Sidecars belong to one audio FILE, not to a stem, so `song.mp3` and `song.wav` in one folder
never share labels: `song.mp3.txt` / `song.mp3.json` are looked up first, and the plain
`song.txt` / `song.json` only when no other audio file in that folder has the stem `song`.
When both sidecars exist, what the `.txt` gives wins over the `.json` (a person wrote the lyrics
or edited the Side-Step labels); the `.json` fills the fields the `.txt` leaves out.
"""

from __future__ import annotations

import json
import re
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
    "timesignature": ("timesignature", "time_signature", "ts", "signature"),
    "language": ("language", "lang", "vocal_language"),
    "instrumental": ("instrumental", "is_instrumental"),
}
ALIAS_TO_FIELD = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}
INSTRUMENTAL_MARK = "[instrumental]"

# Names in Side-Step `.txt` sidecars. Its reader also takes "sig" and "scale"; its own settings
# (trigger tag, repeats, a free "tags" list shown beside the genre, ...) are not labels.
SIDESTEP_ALIASES = {"sig": "timesignature", "scale": "keyscale"}
SIDESTEP_OTHER_NAMES = frozenset(
    {"tags", "custom_tag", "trigger", "tag_position", "repeat", "repeats", "prompt_override", "duration"}
)
SIDESTEP_FIELD_OF = {
    name: field for name, field in {**ALIAS_TO_FIELD, **SIDESTEP_ALIASES}.items() if name not in SIDESTEP_OTHER_NAMES
}
_NAME_VALUE = re.compile(r"^\s*(?P<name>[^\W\d_][\w -]{0,40}?)\s*:(?P<value>.*)$")  # bounded: no slow backtracking


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
    from acestep.audio.decode import AUDIO_EXTENSIONS

    return Counter(p.stem for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def read_sidecars(audio_path: str | Path, folder_stems: Counter[str] | None = None) -> dict[str, Any]:
    """The labels in an audio file's sidecars: caption, genre, lyrics, bpm, keyscale,
    timesignature, language, instrumental (only those given).

    Raises DatasetError naming the sidecar for a `.txt` that is not UTF-8, a `.json` that is not
    valid JSON or not an object, a value of the wrong kind (a bpm of "fast"), two names giving one
    field different values, or a Side-Step `.txt` with a label line that is not `name: value`.
    """
    audio_path = Path(audio_path)
    paths = sidecar_paths(audio_path, folder_stems)
    metadata: dict[str, Any] = {}
    if ".json" in paths:
        metadata.update(_read_json_sidecar(paths[".json"]))
    if ".txt" in paths:
        metadata.update(_read_txt_sidecar(paths[".txt"]))
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


def _read_txt_sidecar(path: Path) -> dict[str, Any]:
    text = _read_text(path, "lyrics sidecar")
    raw = _sidestep_labels(text, path)
    try:
        return parse_metadata({"lyrics": text} if raw is None else raw)
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None


def _sidestep_labels(text: str, path: Path) -> dict[str, str] | None:
    """{field: value as written} from a Side-Step sidecar, or None when `text` is plain lyrics.

    A lyric line such as "Love: it's all I need" or "[Chorus]" never opens a Side-Step file, and
    lyrics that open with "Key: ..." have lines that are not `name: value` (without a `lyrics:`
    line, that makes them lyrics). Raises DatasetError for a line above `lyrics:` that is not
    `name: value`, and for two names giving one field different values.
    """
    lines = text.splitlines()
    filled = [i for i, line in enumerate(lines) if line.strip()]
    names = {i: _sidestep_name(lines[i]) for i in filled}
    if not filled or not _is_sidestep_name(names[filled[0]]):
        return None
    lyrics_at = next((i for i in filled if names[i] and SIDESTEP_FIELD_OF.get(names[i]) == "lyrics"), None)
    header = [i for i in filled if lyrics_at is None or i < lyrics_at]
    if lyrics_at is None and not all(_is_sidestep_name(names[i]) for i in header):
        return None
    raw: dict[str, str] = {}
    given_by: dict[str, str] = {}
    for i in header:
        if names[i] is None:
            raise DatasetError(
                f"{path}: line {i + 1} ({values.show(lines[i].strip())}) is not a `name: value` label; in a "
                "Side-Step sidecar each label takes one line and the lyrics follow a `lyrics:` line"
            )
        field, value = SIDESTEP_FIELD_OF.get(names[i]), _value_of(lines[i])
        if field is not None and not values.is_empty(value):  # Side-Step's own settings are not labels
            _take_label(raw, given_by, field, _written_name(lines[i]), value, path)
    if lyrics_at is not None:
        inline = _value_of(lines[lyrics_at])
        raw["lyrics"] = "\n".join(([inline] if inline else []) + lines[lyrics_at + 1:])
    return raw


def _sidestep_name(line: str) -> str | None:
    """The name of a `name: value` line, as compared with the aliases; None for any other line."""
    match = _NAME_VALUE.match(line)
    return normalize_name(match.group("name")) if match else None


def _is_sidestep_name(name: str | None) -> bool:
    return name is not None and (name in SIDESTEP_FIELD_OF or name in SIDESTEP_OTHER_NAMES)


def _written_name(line: str) -> str:
    return line.split(":", 1)[0].strip()


def _value_of(line: str) -> str:
    return line.split(":", 1)[1].strip()


def _take_label(raw: dict[str, Any], given_by: dict[str, str], field: str, key: str, value: Any, path: Path) -> None:
    """Record `field` = `value` (given under the name `key`); a second, different value is an error."""
    if field in raw and raw[field] != value:
        raise DatasetError(
            f"{path}: {given_by[field]!r} and {key!r} both give the {field}, with different values; keep one"
        )
    raw[field], given_by[field] = value, key


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
        _take_label(raw, given_by, name, key, value, path)
    try:
        return parse_metadata(raw)
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None
