"""What a labeller produces for one audio file, and how it becomes a `.json` sidecar.

Every labeller (captioner, transcriber, 5 Hz LM, signal analysis) returns `Labels`; the batch
job merges them and writes the fields the dataset builder reads (`acestep.dataset.sidecars`).
Unparseable model output is never dropped: it stays in `raw` with `parsed` false.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SIDECAR_FIELDS = ("caption", "genre", "bpm", "keyscale", "timesignature", "language", "lyrics", "is_instrumental")


@dataclass
class Labels:
    """Labels of one file from one labeller. Empty / None fields mean "not said"."""

    caption: str = ""
    genre: str = ""
    bpm: float | None = None
    keyscale: str = ""
    timesignature: str = ""
    language: str = ""
    lyrics: str = ""
    instrumental: bool | None = None
    raw: str = ""  # the model's text as generated
    parsed: bool = True  # false when `raw` could not be read into fields
    source: str = ""  # which labeller: captioner, transcriber, lm, analysis
    notes: list[str] = field(default_factory=list)  # e.g. "bpm from analysis (LM said 240)"

    def sidecar(self) -> dict:
        """The fields the dataset builder reads, only those that are set."""
        values = {"caption": self.caption, "genre": self.genre, "bpm": self.bpm, "keyscale": self.keyscale,
                  "timesignature": self.timesignature, "language": self.language, "lyrics": self.lyrics,
                  "is_instrumental": self.instrumental}
        return {k: v for k, v in values.items() if v not in ("", None)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Labels:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def merge_labels(*labels: Labels) -> Labels:
    """Later labellers fill what earlier ones left empty; the first non-empty value of each field
    wins, raw texts are joined, notes kept."""
    merged = Labels(source="+".join(item.source for item in labels if item.source))
    for item in labels:
        for name in ("caption", "genre", "bpm", "keyscale", "timesignature", "language", "lyrics", "instrumental"):
            if getattr(merged, name) in ("", None) and getattr(item, name) not in ("", None):
                setattr(merged, name, getattr(item, name))
        merged.raw = "\n\n".join(text for text in (merged.raw, item.raw) if text)
        merged.parsed = merged.parsed and item.parsed
        merged.notes.extend(item.notes)
    return merged
