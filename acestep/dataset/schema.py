"""The dataset JSON: what a dataset is, and how it is saved, loaded and validated.

A dataset is a list of samples (an audio file and its labels) plus the settings that turn those
labels into training prompts: the trigger tag, where it goes, and the share of samples prompted
with their genre instead of their caption. The file is versioned (`"version": 1`), holds audio
paths relative to its own folder with "/" separators, and is validated on load: a malformed file
raises `DatasetError` naming the file, the sample and the field, never a KeyError or TypeError.
Older files (the JSON of the official ACE-Step 1.5 trainer and the Estylon trainer) migrate on
load; see `acestep.dataset.migrate`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from acestep.dataset.values import BPM_MAX, BPM_MIN, unix_line_breaks
from acestep.dataset.values import kind as _kind
from acestep.dataset.values import show as _show
from acestep.dataset.languages import VALID_LANGUAGES
from acestep.errors import DatasetError
from acestep.files import read_text, write_atomically

DATASET_VERSION = 1
# "prepend" is the default: "replace" trains on the tag alone and throws every caption away.
TAG_POSITIONS = ("prepend", "append", "replace")
PROMPT_SOURCES = ("caption", "genre")
DEFAULT_SEED = 42


@dataclass
class Sample:
    """One audio file and its labels.

    `audio` is relative to the dataset's root (the folder of its JSON) with "/" separators, or
    absolute for a file outside that folder. `prompt_source` says whether
    the training prompt is built from the caption or from the genre tags.
    """

    audio: str
    caption: str = ""
    genre: str = ""
    lyrics: str = ""
    bpm: float | None = None
    keyscale: str = ""
    timesignature: str = ""
    language: str = "unknown"
    instrumental: bool = False
    duration: float | None = None
    prompt_source: str = "caption"


@dataclass
class Dataset:
    """A named list of samples and the prompt settings shared by all of them.

    `root` is the folder sample paths are relative to (the folder of the JSON once loaded or
    saved, the audio folder once built); it is not written to the file.
    """

    name: str
    samples: list[Sample]
    trigger_tag: str = ""
    tag_position: str = "prepend"
    genre_ratio: float = 0.0
    seed: int = DEFAULT_SEED
    root: Path | None = None

    def audio_path(self, sample: Sample) -> Path:
        """The absolute path of a sample's audio file. Raises DatasetError for a relative path
        in a dataset without a root (built in memory and never saved or loaded)."""
        path = Path(sample.audio)
        if path.is_absolute():
            return path
        if self.root is None:
            raise DatasetError(
                f"dataset {self.name!r}: sample {sample.audio!r} has a relative path but the "
                "dataset has no root folder; load it from its JSON or set `root`"
            )
        return self.root / path


SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))
DATASET_FIELDS = ("version", "name", "trigger_tag", "tag_position", "genre_ratio", "seed", "samples")
_TEXT_FIELDS = ("caption", "genre", "lyrics", "keyscale", "timesignature")


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read, migrate and validate a dataset JSON; its folder becomes the dataset's root.

    Raises DatasetError for a missing or unreadable file, invalid JSON, a newer version, or any
    malformed field (the message names the file, the sample index and audio, and the field).
    The file is only read, never rewritten: save the dataset to store the migrated form.
    """
    return load_dataset_revision(path)[0]


def load_dataset_revision(path: str | os.PathLike) -> tuple[Dataset, str]:
    """`load_dataset(path)` and the revision of the text it was read from (see `dataset_revision`),
    to pass to `save_dataset(..., expected_revision=...)`. Raises DatasetError like `load_dataset`."""
    source = Path(os.path.abspath(path))
    text = read_text(source, DatasetError, "dataset file", "dataset JSON file")
    return _parse_text(text, source), _revision(text)


def dataset_revision(path: str | os.PathLike) -> str | None:
    """The revision of the dataset file at `path` now: the sha256 of its text (hex), or None when
    there is no file. Raises DatasetError when it exists but cannot be read."""
    source = Path(os.path.abspath(path))
    if not source.exists():
        return None
    return _revision(read_text(source, DatasetError, "dataset file", "dataset JSON file"))


def _revision(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse_text(text: str, source: Path) -> Dataset:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{source}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except (ValueError, RecursionError) as error:  # huge integers, absurd nesting
        raise DatasetError(f"{source}: not valid JSON: {error}") from None
    return parse_dataset(data, source=str(source), root=source.parent, default_name=source.stem)


def parse_dataset(data: Any, source: str, root: Path | None, default_name: str = "dataset") -> Dataset:
    """A validated Dataset from decoded JSON of any supported version (see `load_dataset`)."""
    from acestep.dataset.migrate import is_version_0, migrate_version_0

    if not isinstance(data, dict):
        _fail(source, f"must hold a JSON object with \"version\" and \"samples\", found {_kind(data)}")
    if "version" not in data:
        if not is_version_0(data):
            _fail(source, "has no \"version\" field and is not an ACE-Step dataset JSON "
                          "(\"metadata\" + \"samples\" with \"audio_path\")")
        data = dict(data, version=0)
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        _fail(source, f"version must be a whole number, found {_show(version)}")
    if version > DATASET_VERSION:
        _fail(source, f"was written by a newer trainer (dataset version {version}; this one reads "
                      f"up to {DATASET_VERSION}): update the trainer")
    if version == 0:
        migrated = migrate_version_0(data, source, root, default_name)
        dataset = _parse_current(migrated.data, source, root, default_name)
        return migrated.finish(dataset)
    return _parse_current(data, source, root, default_name)


def save_dataset(dataset: Dataset, path: str | os.PathLike, expected_revision: str | None = None) -> Path:
    """Write `dataset` as version-1 JSON (UTF-8, indent 2) and return the file's absolute path.

    Audio paths under the file's folder are written relative to it with "/" separators; files
    elsewhere keep an absolute path (a "../" path would break when either side moves), so save
    the JSON in the audio folder or above it to keep a dataset portable. The dataset is
    validated first, and the file is replaced atomically (temp file + os.replace): a failed save
    leaves the old file as it was.

    With `expected_revision` (from `load_dataset_revision`) the save is refused with a
    DatasetError, and nothing is written, when the file on disk is no longer that revision:
    someone else saved (or deleted) it since it was loaded.
    """
    return save_dataset_revision(dataset, path, expected_revision)[0]


# One save at a time in this process (the web app's browsers), so that the revision check and
# the replace of one save cannot interleave with another's.
_SAVE_LOCK = threading.Lock()


def save_dataset_revision(dataset: Dataset, path: str | os.PathLike,
                          expected_revision: str | None = None) -> tuple[Path, str]:
    """`save_dataset`, returning the file's absolute path and the revision just written (the
    `expected_revision` of the next save)."""
    target = Path(os.path.abspath(path))
    data = _to_json(dataset, target.parent)
    _parse_current(data, str(target), target.parent, target.stem)  # never write an invalid file
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with _SAVE_LOCK:
        if expected_revision is not None:
            _check_revision(target, expected_revision)
        write_atomically(target, text, DatasetError, "dataset file")
    return target, _revision(text)


def _check_revision(target: Path, expected: str) -> None:
    current = dataset_revision(target)
    if current == expected:
        return
    what = "deleted" if current is None else "changed by someone else"
    raise DatasetError(f"{target} was {what} since you loaded it, so your edits were not written. "
                       "Reload it and make your edits again, or save them under another name.")


def training_caption(sample: Sample, trigger_tag: str, tag_position: str) -> str:
    """The caption text a sample is trained with.

    The base is the sample's caption, or its genre when `prompt_source` is "genre" (each falls
    back to the other when empty). A trigger tag is prepended ("tag, caption"), appended
    ("caption, tag") or replaces the text; an empty base leaves just the tag; no tag, no change.
    """
    if tag_position not in TAG_POSITIONS:
        raise DatasetError(f"tag_position must be one of {', '.join(TAG_POSITIONS)}, found {tag_position!r}")
    if sample.prompt_source == "genre":
        base = sample.genre.strip() or sample.caption.strip()
    else:
        base = sample.caption.strip() or sample.genre.strip()
    tag = trigger_tag.strip()
    if not tag:
        return base
    if tag_position == "replace" or not base:
        return tag
    return f"{tag}, {base}" if tag_position == "prepend" else f"{base}, {tag}"


def assign_prompt_sources(dataset: Dataset, genre_ratio: float | None = None, seed: int | None = None) -> Dataset:
    """A copy of `dataset` where round(genre_ratio × samples) samples are prompted with their genre.

    Only samples that have a genre can be chosen (when fewer have one, all of those are); the
    choice is a seeded draw, the same for the same seed and samples. Without arguments the
    dataset's own ratio and seed are used; the copy records the ones used. The input is unchanged.
    """
    ratio = dataset.genre_ratio if genre_ratio is None else genre_ratio
    seed = dataset.seed if seed is None else seed
    _check_ratio(ratio, "genre_ratio")
    chosen = choose_genre_samples(dataset.samples, ratio, seed)
    samples = [replace(s, prompt_source="genre" if i in chosen else "caption") for i, s in enumerate(dataset.samples)]
    return replace(dataset, samples=samples, genre_ratio=float(ratio), seed=seed)


def choose_genre_samples(samples: list[Sample], ratio: float, seed: int) -> set[int]:
    """Indices of the samples drawn for genre prompts (see `assign_prompt_sources`)."""
    wanted = math.floor(ratio * len(samples) + 0.5)  # round half up: 0.25 × 10 -> 3
    eligible = [i for i, sample in enumerate(samples) if sample.genre.strip()]
    return set(random.Random(seed).sample(eligible, min(wanted, len(eligible))))


# --- reading and writing the current version -------------------------------------------------


def _to_json(dataset: Dataset, folder: Path) -> dict[str, Any]:
    samples = []
    for sample in dataset.samples:
        entry = {name: getattr(sample, name) for name in SAMPLE_FIELDS}
        entry["audio"] = _relative_audio(dataset, sample, folder)
        samples.append(entry)
    return {
        "version": DATASET_VERSION,
        "name": dataset.name,
        "trigger_tag": dataset.trigger_tag,
        "tag_position": dataset.tag_position,
        "genre_ratio": dataset.genre_ratio,
        "seed": dataset.seed,
        "samples": samples,
    }


def _relative_audio(dataset: Dataset, sample: Sample, folder: Path) -> Any:
    if not isinstance(sample.audio, str):
        return sample.audio  # validation names it
    if dataset.root is None and not Path(sample.audio).is_absolute():
        return _posix(sample.audio)  # no root: already relative to where it is saved
    absolute = Path(os.path.normpath(dataset.audio_path(sample)))
    try:
        return absolute.relative_to(folder).as_posix()
    except ValueError:  # outside the JSON's folder: "../" paths break when either moves
        return absolute.as_posix()


def _parse_current(data: dict[str, Any], source: str, root: Path | None, default_name: str) -> Dataset:
    unknown = sorted(set(data) - set(DATASET_FIELDS))
    if unknown:
        _fail(source, f"unknown field(s) {', '.join(map(repr, unknown))}; a dataset has {', '.join(DATASET_FIELDS)}")
    if "samples" not in data:
        _fail(source, "has no \"samples\" list")
    raw_samples = data["samples"]
    if not isinstance(raw_samples, list):
        _fail(source, f"samples must be a list, found {_kind(raw_samples)}")
    name = _text(data, "name", source, default_name)
    trigger_tag = _text(data, "trigger_tag", source, "")
    tag_position = _choice(data, "tag_position", TAG_POSITIONS, source, "prepend")
    genre_ratio = data.get("genre_ratio", 0.0)
    if not _is_number(genre_ratio):
        _fail(source, f"genre_ratio must be a number from 0 to 1, found {_show(genre_ratio)}")
    _check_ratio(genre_ratio, "genre_ratio", source)
    seed = data.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail(source, f"seed must be a whole number, found {_show(seed)}")
    samples = [_parse_sample(raw, index, source) for index, raw in enumerate(raw_samples)]
    _check_unique_audio(samples, source)
    return Dataset(name, samples, trigger_tag, tag_position, float(genre_ratio), seed, root)


def _parse_sample(raw: Any, index: int, source: str) -> Sample:
    where = f"{source}: sample {index}"
    if not isinstance(raw, dict):
        _fail(where, f"must be an object with an \"audio\" path, found {_kind(raw)}")
    audio = raw.get("audio")
    if isinstance(audio, str) and audio.strip():
        where = f"{where} ({audio})"
    unknown = sorted(set(raw) - set(SAMPLE_FIELDS))
    if unknown:
        _fail(where, f"unknown field(s) {', '.join(map(repr, unknown))}; a sample has {', '.join(SAMPLE_FIELDS)}")
    if "audio" not in raw:
        _fail(where, "has no \"audio\" field (the path of its audio file)")
    if not isinstance(audio, str) or not audio.strip():
        _fail(where, f"audio must be a non-empty path, found {_show(audio)}")
    values: dict[str, Any] = {"audio": _posix(audio.strip())}
    for name in _TEXT_FIELDS:
        values[name] = _text(raw, name, where, "")
    values["bpm"] = _optional_number(raw, "bpm", where)
    if values["bpm"] is not None and not BPM_MIN < values["bpm"] < BPM_MAX:
        _fail(where, f"bpm must be above {BPM_MIN:g} and below {BPM_MAX:g}, found {_show(raw['bpm'])}")
    values["duration"] = _optional_number(raw, "duration", where)
    if values["duration"] is not None and values["duration"] <= 0:
        _fail(where, f"duration must be a positive number of seconds, found {_show(raw['duration'])}")
    values["language"] = _choice(raw, "language", VALID_LANGUAGES, where, "unknown")
    instrumental = raw.get("instrumental", False)
    if not isinstance(instrumental, bool):
        _fail(where, f"instrumental must be true or false, found {_show(instrumental)}")
    values["instrumental"] = instrumental
    values["prompt_source"] = _choice(raw, "prompt_source", PROMPT_SOURCES, where, "caption")
    return Sample(**values)


def _check_unique_audio(samples: list[Sample], source: str) -> None:
    seen: dict[str, int] = {}
    for index, sample in enumerate(samples):
        if sample.audio in seen:
            _fail(f"{source}: sample {index} ({sample.audio})",
                  f"audio repeats sample {seen[sample.audio]}; each file may appear once")
        seen[sample.audio] = index


# --- small validators ------------------------------------------------------------------------


def _fail(where: str, message: str) -> NoReturn:
    raise DatasetError(f"{where}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _posix(path: str) -> str:
    return path.replace("\\", "/")


def _text(data: dict[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        _fail(where, f"{key} must be text, found {_show(value)}")
    return unix_line_breaks(value)


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or value not in allowed:
        _fail(where, f"{key} must be one of {', '.join(allowed)}, found {_show(value)}")
    return value


def _optional_number(data: dict[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        _fail(where, f"{key} must be a number or null, found {_show(value)}")
    number = _finite(value)
    if number is None:
        _fail(where, f"{key} must be a finite number, found {_show(value)}")
    return number


def _finite(value: Any) -> float | None:
    """`value` as a float, or None when it is not a finite number (NaN, inf, 10**400)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _check_ratio(ratio: Any, key: str, where: str = "dataset") -> None:
    number = _finite(ratio) if _is_number(ratio) else None
    if number is None or not 0.0 <= number <= 1.0:
        _fail(where, f"{key} must be a number from 0 to 1, found {_show(ratio)}")
