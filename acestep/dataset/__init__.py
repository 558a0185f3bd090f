"""Datasets: the versioned dataset JSON, building one from a folder of audio (or adding a folder's
new songs to one), and the report.

`schema` (the JSON, captions, prompt sources) and `languages` import nothing heavy; `build`,
`update` and `report` decode audio and are imported when one of their names is first used, so
that the UI can read and edit datasets without loading the audio stack.
"""

from acestep.dataset.languages import LANGUAGE_NAMES, VALID_LANGUAGES, parse_language
from acestep.dataset.schema import (
    DATASET_VERSION,
    PROMPT_SOURCES,
    TAG_POSITIONS,
    Dataset,
    Sample,
    assign_prompt_sources,
    dataset_revision,
    load_dataset,
    load_dataset_revision,
    save_dataset,
    save_dataset_revision,
    training_caption,
)

_LAZY = {
    "BuildResult": "build",
    "build_dataset": "build",
    "read_csv_metadata": "build",
    "read_sidecars": "build",
    "scan_audio_files": "build",
    "DatasetReport": "report",
    "FileReport": "report",
    "dataset_report": "report",
    "format_report": "report",
    "UpdateResult": "update",
    "update_dataset": "update",
}

__all__ = [
    "DATASET_VERSION",
    "LANGUAGE_NAMES",
    "PROMPT_SOURCES",
    "TAG_POSITIONS",
    "VALID_LANGUAGES",
    "Dataset",
    "Sample",
    "assign_prompt_sources",
    "dataset_revision",
    "load_dataset",
    "load_dataset_revision",
    "parse_language",
    "save_dataset",
    "save_dataset_revision",
    "training_caption",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"acestep.dataset.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'acestep.dataset' has no attribute {name!r}")
