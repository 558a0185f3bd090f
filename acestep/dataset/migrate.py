"""Version 0: the dataset JSON of the official ACE-Step 1.5 trainer and the Estylon trainer.

That format has no version field:
`{"metadata": {"name", "custom_tag", "tag_position", "genre_ratio" (0-100), "all_instrumental", ...},
  "samples": [{"audio_path", "caption", "genre", "lyrics", "bpm", "keyscale", "timesignature",
               "duration", "language", "is_instrumental", "prompt_override", "custom_tag", ...}]}`
(ace-step/ACE-Step-1.5 `acestep/training/dataset_builder*.py`, Estylon/ace-lora-trainer
`acestep/training/dataset_builder.py`). What changes on the way to version 1:

- `audio_path` -> `audio`; an absolute path under the JSON's folder becomes relative to it, a
  relative one is taken as relative to that folder, backslashes become "/".
- `genre_ratio` was a percentage (30 = 30 %); it becomes a fraction (0.3).
- `prompt_override` "caption"/"genre" -> `prompt_source`; samples without an override get theirs
  from the genre ratio (a seeded draw among them, seed 42 as upstream; not upstream's exact draw).
- The trigger tag is `metadata.custom_tag`, or, when that is empty, the samples' `custom_tag`
  (upstream trained with the per-sample copy); samples with different tags are refused.
- Lyrics "[Instrumental]" are the instrumental placeholder: lyrics become "" and the sample
  instrumental. Language "instrumental" (some tools) becomes "unknown". `raw_lyrics` fills in
  empty `lyrics`. A `bpm` or `duration` of 0 meant "unknown" and becomes null.
- `id`, `filename`, `labeled`, `raw_lyrics`, `formatted_lyrics` and other keys are dropped.
  Unlabelled samples are kept (upstream skipped them when preprocessing): the dataset report
  lists those without a caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.dataset import values
from acestep.errors import DatasetError

if TYPE_CHECKING:
    from acestep.dataset.schema import Dataset

INSTRUMENTAL_PLACEHOLDER = "[instrumental]"
UPSTREAM_SEED = 42


def is_version_0(data: dict[str, Any]) -> bool:
    """Whether a JSON object without "version" is an upstream/Estylon dataset."""
    if isinstance(data.get("metadata"), dict):
        return True
    samples = data.get("samples")
    return isinstance(samples, list) and any(isinstance(s, dict) and "audio_path" in s for s in samples)


@dataclass
class Migrated:
    """Version-1 JSON data, plus which samples still need a prompt source from the genre ratio."""

    data: dict[str, Any]
    free: list[int] = field(default_factory=list)

    def finish(self, dataset: Dataset) -> Dataset:
        from acestep.dataset.schema import choose_genre_samples

        chosen = choose_genre_samples([dataset.samples[i] for i in self.free], dataset.genre_ratio, dataset.seed)
        samples = list(dataset.samples)
        for position, index in enumerate(self.free):
            samples[index] = replace(samples[index], prompt_source="genre" if position in chosen else "caption")
        return replace(dataset, samples=samples)


def migrate_version_0(data: dict[str, Any], source: str, root: Path | None, default_name: str) -> Migrated:
    """Version-1 data from a version-0 object; raises DatasetError naming the sample and field."""
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DatasetError(f"{source}: metadata must be an object, found {values.kind(metadata)}")
    samples = data.get("samples")
    if not isinstance(samples, list):
        raise DatasetError(f"{source}: samples must be a list, found {values.kind(samples)}")
    migrated = Migrated({
        "version": 1,
        "name": _meta_text(metadata, "name", source) or default_name,
        "tag_position": metadata.get("tag_position", "prepend"),
        "genre_ratio": _genre_ratio(metadata.get("genre_ratio"), source),
        "seed": UPSTREAM_SEED,
        "samples": [],
    })
    tags: dict[str, int] = {}
    for index, raw in enumerate(samples):
        sample, tag, has_override = _migrate_sample(raw, index, source, root)
        migrated.data["samples"].append(sample)
        if tag:
            tags.setdefault(tag, index)
        if not has_override:
            migrated.free.append(index)
    migrated.data["trigger_tag"] = _trigger_tag(metadata, tags, source)
    return migrated


def _migrate_sample(raw: Any, index: int, source: str, root: Path | None) -> tuple[dict[str, Any], str, bool]:
    where = f"{source}: sample {index}"
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: must be an object with an \"audio_path\", found {values.kind(raw)}")
    path = raw.get("audio_path")
    if not isinstance(path, str) or not path.strip():
        raise DatasetError(f"{where}: audio_path must be a non-empty path, found {values.show(path)}")
    where = f"{where} ({path})"
    try:
        return _convert_sample(raw, path, root)
    except ValueError as error:
        raise DatasetError(f"{where}: {error}") from None


def _convert_sample(raw: dict[str, Any], path: str, root: Path | None) -> tuple[dict[str, Any], str, bool]:
    lyrics = values.parse_lyrics(raw.get("lyrics")) or values.parse_lyrics(raw.get("raw_lyrics")) or ""
    instrumental = values.parse_bool(raw.get("is_instrumental"), "is_instrumental")
    if lyrics.casefold() == INSTRUMENTAL_PLACEHOLDER:
        lyrics, instrumental = "", True
    language_raw = raw.get("language")
    if isinstance(language_raw, str) and language_raw.strip().casefold() == "instrumental":
        language, instrumental = "unknown", True
    else:
        language = values.parse_metadata_language(language_raw) or "unknown"
    override = raw.get("prompt_override")
    if override not in (None, "caption", "genre"):
        raise ValueError(f"prompt_override must be null, \"caption\" or \"genre\", found {values.show(override)}")
    sample = {
        "audio": _audio(path, root),
        "caption": values.parse_text(raw.get("caption"), "caption") or "",
        "genre": values.parse_text(raw.get("genre"), "genre") or "",
        "lyrics": lyrics,
        "bpm": None if raw.get("bpm") == 0 else values.parse_bpm(raw.get("bpm")),
        "keyscale": values.parse_text(raw.get("keyscale"), "keyscale") or "",
        "timesignature": values.parse_text(raw.get("timesignature"), "timesignature", allow_number=True) or "",
        "language": language,
        "instrumental": bool(instrumental),
        "duration": _duration(raw.get("duration")),
        "prompt_source": override or "caption",
    }
    tag = values.parse_text(raw.get("custom_tag"), "custom_tag") or ""
    return sample, tag, override is not None


def _audio(path: str, root: Path | None) -> str:
    posix = path.strip().replace("\\", "/")
    candidate = Path(posix)
    if root is not None and candidate.is_absolute():
        try:
            return candidate.relative_to(root).as_posix()
        except ValueError:
            return posix  # outside the dataset's folder: stays absolute
    return posix


def _duration(value: Any) -> float | None:
    if values.is_empty(value) or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"duration must be a number of seconds, found {values.show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"duration must be a number of seconds, found {values.show(value)}") from None


def _genre_ratio(value: Any, source: str) -> Any:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise DatasetError(
            f"{source}: metadata.genre_ratio must be a percentage from 0 to 100, found {values.show(value)}")
    return value / 100


def _meta_text(metadata: dict[str, Any], key: str, source: str) -> str:
    try:
        return values.parse_text(metadata.get(key), key) or ""
    except ValueError as error:
        raise DatasetError(f"{source}: metadata.{error}") from None


def _trigger_tag(metadata: dict[str, Any], sample_tags: dict[str, int], source: str) -> str:
    tag = _meta_text(metadata, "custom_tag", source)
    if tag:
        return tag
    if len(sample_tags) > 1:
        found = ", ".join(f"{t!r} (sample {i})" for t, i in sample_tags.items())
        raise DatasetError(
            f"{source}: samples carry different custom_tag values ({found}); a dataset has one "
            "trigger tag: set metadata.custom_tag or make the samples' tags equal"
        )
    return next(iter(sample_tags), "")
