"""The `.json` sidecar a labeller writes beside an audio file: where it is, and merging labels into
it without ever giving one field twice.

A field is "there" under any name the dataset builder reads for it (`tempo` for `bpm`, `key` for
`keyscale`, ...: `acestep.dataset.sidecars.FIELD_ALIASES`): fill-missing leaves it, and a new
value goes under the name already there, so the builder never refuses a sidecar a labeller wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from acestep.captioning.labels import Labels
from acestep.dataset.sidecars import ALIAS_TO_FIELD, normalize_name
from acestep.dataset.values import is_empty
from acestep.files import write_atomically

if TYPE_CHECKING:
    from acestep.captioning.batch import Labeller


def sidecar_path(audio: Path) -> Path:
    """The `.json` sidecar to update: an existing one the dataset reads for this file, else `<file>.json`."""
    from acestep.dataset.sidecars import sidecar_paths

    return sidecar_paths(audio).get(".json", audio.with_name(audio.name + ".json"))


def write_sidecar_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _is_blank(value) -> bool:
    return is_empty(value) or value == []


def keys_of(data: dict, field_name: str) -> list[str]:
    """The keys of a sidecar that give `field_name` as the dataset builder reads them ("bpm" -> ["tempo"])."""
    return [key for key in data if ALIAS_TO_FIELD.get(normalize_name(key)) == field_name]


def given_value(data: dict, field_name: str) -> tuple[str, object] | None:
    """(key, value) of the first key that gives `field_name` a value; None when none does."""
    return next(((key, data[key]) for key in keys_of(data, field_name) if not _is_blank(data[key])), None)


def update_sidecar(audio: Path, labels: Labels, labeller: Labeller, overwrite: bool) -> set[str]:
    """Merge one labeller's labels into the file's `.json` sidecar (other keys kept).

    A field the sidecar gives under any alias counts as there: fill-missing leaves it; a value
    written goes under the key(s) already there, else our name. Returns the fields written
    (dataset names: "bpm", "keyscale", "instrumental", ...). Raises OSError when the folder
    cannot be written.
    """
    path = sidecar_path(audio)
    data = json.loads(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}
    written: set[str] = set()
    for key, value in labels.sidecar().items():
        field_name = ALIAS_TO_FIELD.get(key, key)
        if not overwrite and given_value(data, field_name) is not None:
            continue
        for existing in keys_of(data, field_name) or [key]:
            data[existing] = value
        written.add(field_name)
    data.setdefault("labelled_by", {})[labeller.name] = labeller.fingerprint()
    if labels.raw:
        data.setdefault("raw_outputs", {})[labeller.name] = labels.raw
    if not labels.parsed:
        data.setdefault("unparsed", []).append(labeller.name)
    write_sidecar_json(path, data)
    return written
