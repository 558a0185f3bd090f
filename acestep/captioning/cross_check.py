"""Signal analysis checks the BPM and key in a sidecar, because language models hallucinate them.

A BPM off by more than 4 % (and not a clean double or half) or a key that is neither the
analysed one nor its relative major/minor is contradicted. A value a model wrote in this run is
then replaced, with a note in the sidecar; a value that was there before (a person's) is kept,
and the summary says the analysis disagrees and how to take its value.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from acestep.captioning.labels import Labels
from acestep.captioning import sidecar_json
from acestep.captioning.sidecar_json import given_value, keys_of, sidecar_path
from acestep.dataset.values import parse_bpm

BPM_TOLERANCE = 0.04


NOTES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}


def pitch_class_key(text: str) -> tuple[int, str] | None:
    """"Bb major" / "A#" / "Am" -> (pitch class, "major" | "minor"); None when it is not a key."""
    from acestep.dataset.values import normalize_keyscale

    parts = normalize_keyscale(text).split()
    if len(parts) != 2 or parts[1] not in ("major", "minor"):
        return None
    tonic = FLATS.get(parts[0], parts[0])
    return (NOTES.index(tonic), parts[1]) if tonic in NOTES else None


def keys_agree(found: str, analysed: str) -> bool:
    """The same key, an enharmonic spelling of it, or its relative major/minor."""
    a, b = pitch_class_key(found), pitch_class_key(analysed)
    if a is None or b is None:
        return False
    if a == b:
        return True
    major, minor = (a, b) if a[1] == "major" else (b, a)
    return major[1] == "major" and minor[1] == "minor" and (major[0] + 9) % 12 == minor[0]


def _bpm_agrees(found: float, analysed: float) -> bool:
    return any(abs(found - analysed * factor) <= BPM_TOLERANCE * analysed * factor for factor in (1.0, 2.0, 0.5))


def _contradicted(data: dict, analysis: Labels) -> list[tuple[str, str, object, object]]:
    """(field, key, sidecar value, analysed value) for the BPM and the key the analysis contradicts."""
    found: list[tuple[str, str, object, object]] = []
    bpm = given_value(data, "bpm")
    if analysis.bpm and bpm is not None:
        try:
            value = parse_bpm(bpm[1])
        except ValueError:
            value = None  # not a tempo: nothing to compare
        if value is not None and not _bpm_agrees(value, analysis.bpm):
            found.append(("bpm", bpm[0], bpm[1], analysis.bpm))
    key = given_value(data, "keyscale")
    if analysis.keyscale and key is not None and isinstance(key[1], str) and not keys_agree(key[1], analysis.keyscale):
        found.append(("keyscale", key[0], key[1], analysis.keyscale))
    return found


def cross_check(audio: Path, analysis: Labels, by_models: Collection[str] = ()) -> list[str]:
    """Check the sidecar's BPM and key against the signal analysis; return notes for the summary.

    A value a model gave in this run (`by_models`: "bpm", "keyscale") that the analysis
    contradicts is replaced under the key(s) it is written with, and the sidecar notes it. Any
    other value (a person's, there before the run) is kept; a note says the analysis disagrees.
    Raises OSError when the sidecar cannot be written.
    """
    path = sidecar_path(audio)
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    changed: list[str] = []
    notes: list[str] = []
    for field_name, key, value, analysed in _contradicted(data, analysis):
        what = "bpm" if field_name == "bpm" else "key"
        value, shown = (f"{v:g}" if isinstance(v, float) else v for v in (value, analysed))
        if field_name in by_models:
            changed.append(f"{what} {value} -> {shown}")
            for name in keys_of(data, field_name):
                data[name] = analysed
        else:
            notes.append(f"{audio.name}: the sidecar's {what} {value} is kept, though signal analysis finds {shown} "
                         f"(to take it, delete \"{key}\" from {path.name} and run again, or run again with "
                         "--labeller analysis --mode overwrite)")
    if changed:
        data.setdefault("label_notes", []).append("corrected by signal analysis: " + ", ".join(changed))
        sidecar_json.write_sidecar_json(path, data)  # by the module: tests refuse its writes
        notes.insert(0, f"{audio.name}: {', '.join(changed)} (signal analysis contradicted the model)")
    return notes
