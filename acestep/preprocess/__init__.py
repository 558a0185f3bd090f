"""Preprocessing: dataset JSON -> a folder of training tensors (see `pipeline.py`)."""

from acestep.preprocess.pipeline import (
    PreprocessProgress,
    PreprocessSettings,
    PreprocessSummary,
    preprocess_dataset,
    sample_id,
)
from acestep.preprocess.tensors import (
    Manifest,
    PreprocessedDataset,
    check_model_matches,
    read_manifest,
)

__all__ = [
    "Manifest",
    "PreprocessProgress",
    "PreprocessSettings",
    "PreprocessSummary",
    "PreprocessedDataset",
    "check_model_matches",
    "preprocess_dataset",
    "read_manifest",
    "sample_id",
]
