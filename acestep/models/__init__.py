"""Model discovery, download and loading for ACE-Step 1.5 checkpoints.

Heavy imports (torch, diffusers, transformers) happen when a loader is first used, so that
listing checkpoints stays cheap for the UI process.
"""

from acestep.models.checkpoints import (
    OFFICIAL_MODELS,
    CheckpointInfo,
    default_checkpoints_dir,
    download_model,
    list_checkpoints,
    resolve_model_path,
)
from acestep.models.config import AceStepModelConfig, read_dit_config

__all__ = [
    "OFFICIAL_MODELS",
    "AceStepModelConfig",
    "CheckpointInfo",
    "default_checkpoints_dir",
    "download_model",
    "list_checkpoints",
    "load_acestep",
    "load_text_encoder",
    "load_vae",
    "read_dit_config",
    "resolve_model_path",
]


def __getattr__(name):
    if name == "load_acestep":
        from acestep.models.load import load_acestep

        return load_acestep
    if name in ("load_vae", "load_text_encoder"):
        from acestep.models import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'acestep.models' has no attribute {name!r}")
