"""Bulk tag edits: add or remove one tag (a comma-separated part) in the captions and/or genres of
some samples of a dataset. The Dataset tab and `acestep-trainer tags` both call `edit_tags`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from acestep.dataset.schema import Dataset
from acestep.errors import DatasetError

TAG_FIELDS = ("caption", "genre", "caption and genre")
TAG_ACTIONS = ("add", "remove")


@dataclass(frozen=True)
class TagEdit:
    """The dataset after a tag edit (the same object when nothing changed) and what was done."""

    dataset: Dataset
    changed: int  # samples whose caption or genre changed
    selected: int  # samples the edit looked at
    message: str


def parse_selection(text: str, count: int) -> list[int]:
    """Sample indices (0-based) from "1-3, 7" (numbers as the table shows them); empty means all.
    Raises DatasetError for anything else or a number outside 1..count."""
    if not (text or "").strip():
        return list(range(count))
    chosen: set[int] = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise DatasetError(f"samples: {part!r} is not a number or a range like 2-5") from None
        if not 1 <= low <= high <= count:
            raise DatasetError(f"samples: {part!r} is outside 1-{count}")
        chosen.update(range(low - 1, high))
    return sorted(chosen)


def add_tag(text: str, tag: str) -> str:
    """`text` (comma-separated tags) with `tag` added at the end, unless it is there already
    (compared without case)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if tag.casefold() in (part.casefold() for part in parts):
        return text
    return ", ".join([*parts, tag])


def remove_tag(text: str, tag: str) -> str:
    """`text` without the comma-separated parts equal to `tag` (compared without case)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    kept = [part for part in parts if part.casefold() != tag.casefold()]
    return text if len(kept) == len(parts) else ", ".join(kept)


def edit_tags(dataset: Dataset, action: str, tag: str, where: str = "caption", selection: str = "") -> TagEdit:
    """Add or remove `tag` in the caption and/or genre (`where`, one of TAG_FIELDS) of the samples
    `selection` names (`parse_selection`; all when empty). Raises DatasetError for an empty tag, a
    tag with a comma (tags are the comma-separated parts), an unknown action or field, or a bad
    selection."""
    tag = tag.strip().strip(",").strip()
    if not tag:
        raise DatasetError("Type the tag to add or remove.")
    if "," in tag:
        parts = " and ".join(repr(part.strip()) for part in tag.split(",") if part.strip())
        raise DatasetError(f"{tag!r} is several tags (tags are separated by commas): {action} {parts} one at a time.")
    if action not in TAG_ACTIONS or where not in TAG_FIELDS:
        raise DatasetError(f"tag edit: action must be add or remove and field one of {', '.join(TAG_FIELDS)}")
    edit = add_tag if action == "add" else remove_tag
    names = ("caption", "genre") if where == "caption and genre" else (where,)
    indices = parse_selection(selection, len(dataset.samples))
    samples = list(dataset.samples)
    changed = 0
    for index in indices:
        sample = samples[index]
        edited = replace(sample, **{name: edit(getattr(sample, name), tag) for name in names})
        if edited != sample:
            samples[index], changed = edited, changed + 1
    message = f"{'Added' if action == 'add' else 'Removed'} {tag!r} in {changed} of {len(indices)} sample(s)."
    return TagEdit(replace(dataset, samples=samples) if changed else dataset, changed, len(indices), message)
