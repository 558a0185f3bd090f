"""Loaders for the models that sit beside the DiT: the Oobleck VAE and the Qwen3 text encoder.

Both are built from their config with transformers'/diffusers' own classes (no code from the
checkpoint is ever run) and filled by the same strict loader as the DiT.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderOobleck

from acestep.errors import CheckpointError
from acestep.files import read_json_object
from acestep.models.checkpoints import TEXT_ENCODER, VAE, resolve_model_path
from acestep.models.weights import (
    SafetensorsIndex,
    check_state_dict,
    empty_weights,
    fill_module,
    header_shapes,
    weight_files,
)

VAE_SAMPLE_RATE = 48_000
VAE_HOP = 1920  # 48 kHz / 1920 = 25 latent frames per second
DEFAULT_VAE = "vae"
DEFAULT_TEXT_ENCODER = "Qwen3-Embedding-0.6B"


def _read_config(folder: Path) -> dict:
    return read_json_object(folder / "config.json", CheckpointError,
                            f"{folder / 'config.json'} does not exist; {folder} is not a model folder.")


def _subfolder_if_pipeline(path: str | Path, name: str) -> str | Path:
    """A diffusers pipeline folder holds the model in a subfolder (`vae/`, `text_encoder/`)."""
    candidate = Path(path) / name
    return candidate if (Path(path) / "model_index.json").is_file() and candidate.is_dir() else path


def vae_hop(config: dict) -> int:
    hop = 1
    for ratio in config.get("downsampling_ratios", []):
        hop *= int(ratio)
    return hop


def load_vae(path: str | Path = DEFAULT_VAE, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             checkpoints_dir: Path | None = None, download: bool = False) -> AutoencoderOobleck:
    """Load the ACE-Step 1.5 VAE (`AutoencoderOobleck`, 48 kHz, hop 1920 -> 25 frames/s).

    Refuses another autoencoder (e.g. Stable Audio's 44.1 kHz Oobleck) with a clear message:
    its latents would not match what the DiT was trained on.
    """
    folder = resolve_model_path(_subfolder_if_pipeline(path, "vae"), VAE, checkpoints_dir, download)
    config = _read_config(folder)
    if config.get("_class_name") != "AutoencoderOobleck":
        raise CheckpointError(
            f"{folder / 'config.json'} describes {config.get('_class_name')!r}, not the ACE-Step "
            "AutoencoderOobleck VAE. Use checkpoints/vae from ACE-Step/Ace-Step1.5."
        )
    rate, hop = config.get("sampling_rate"), vae_hop(config)
    if rate != VAE_SAMPLE_RATE or hop != VAE_HOP:
        raise CheckpointError(
            f"{folder / 'config.json'} is a {rate} Hz VAE with hop {hop}; ACE-Step 1.5 needs the 48000 Hz VAE "
            "with hop 1920 (25 latent frames per second). Use checkpoints/vae from ACE-Step/Ace-Step1.5."
        )
    with empty_weights(), warnings.catch_warnings():
        # diffusers builds the Oobleck convs with torch's deprecated weight_norm: not the user's concern
        warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
        vae = AutoencoderOobleck.from_config(config)
    files = weight_files(folder, "diffusion_pytorch_model.safetensors")
    index = SafetensorsIndex(files)
    check_state_dict(vae, header_shapes(index, index.keys()), str(files[0]))
    return fill_module(vae, index.load(index.keys(), dtype, device), device)


def load_text_encoder(path: str | Path = DEFAULT_TEXT_ENCODER, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", checkpoints_dir: Path | None = None,
                      download: bool = False):
    """Load Qwen3-Embedding (a transformers `Qwen3Model`) and its tokenizer.

    Returns `(text_encoder, tokenizer)`. The captions go through the whole model; the lyrics
    only through its token-embedding table (`text_encoder.embed_tokens`).
    """
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    folder = resolve_model_path(_subfolder_if_pipeline(path, "text_encoder"), TEXT_ENCODER, checkpoints_dir, download)
    config = _read_config(folder)
    if config.get("model_type") != "qwen3":
        raise CheckpointError(
            f"{folder / 'config.json'} has model_type {config.get('model_type')!r}; the text encoder must be "
            "Qwen3-Embedding-0.6B (model_type 'qwen3') from ACE-Step/Ace-Step1.5."
        )
    with empty_weights():
        model = Qwen3Model(Qwen3Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")}))
    files = weight_files(folder, "model.safetensors")
    index = SafetensorsIndex(files)
    # Checkpoints saved from a causal-LM wrapper prefix every key with "model.".
    rename = {k: k[len("model."):] if k.startswith("model.") else k for k in index.keys()}
    shapes = header_shapes(index, index.keys())
    check_state_dict(model, {rename[k]: shapes[k] for k in index.keys()}, str(files[0]))
    loaded = index.load(index.keys(), dtype, device)
    fill_module(model, {rename[k]: v for k, v in loaded.items()}, device)
    tokenizer_folder = folder.parent / "tokenizer" if (folder.parent / "model_index.json").is_file() else folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"The tokenizer in {tokenizer_folder} could not be loaded ({exc}).") from exc
    return model, tokenizer
