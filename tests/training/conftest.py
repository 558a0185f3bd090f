"""Tensors folders for training tests, written through the preprocessing contract for the tiny
checkpoint (no VAE pass: training only reads the tensors)."""

from pathlib import Path

import pytest
import torch

from acestep.models import read_dit_config
from acestep.models.load import encoder_digest
from acestep.preprocess.manifest import Manifest, ManifestSample, write_manifest
from acestep.preprocess.tensors import write_sample


def write_tensors_dir(folder: Path, checkpoint: Path, count: int, seed: int = 0, frames=(20, 44)) -> Path:
    """`count` samples with random latents of `frames` lengths and random conditions."""
    config = read_dit_config(checkpoint)
    manifest = Manifest(model={"checkpoint": str(checkpoint), "variant": config.variant,
                               "fingerprint": config.fingerprint, "weights_digest": encoder_digest(checkpoint)},
                        settings={"max_duration": 240.0}, trigger_tag="mystyle")
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        n = int(torch.randint(frames[0], frames[1] + 1, (1,), generator=generator))
        tokens = int(torch.randint(6, 14, (1,), generator=generator))
        name = f"sample{i:02d}.safetensors"
        write_sample(folder, name, {"target_latents": torch.randn(n, 64, generator=generator),
                                    "encoder_hidden_states": torch.randn(tokens, 64, generator=generator),
                                    "encoder_attention_mask": torch.ones(tokens, dtype=torch.bool)}, {})
        manifest.samples.append(ManifestSample(id=f"sample{i:02d}", source=f"audio/{i}.wav", tensors=name, frames=n,
                                               duration=n / 25, source_hash=f"h{i}", key=f"k{i}"))
    write_manifest(folder, manifest)
    return folder


@pytest.fixture(scope="session")
def tiny_dit(tiny_checkpoints) -> Path:
    return tiny_checkpoints / "acestep-v15-turbo"


@pytest.fixture(scope="session")
def tensors_17(tiny_dit, tmp_path_factory) -> Path:
    """17 samples: the accumulation case of the issue (batch 1, accumulation 4 -> 5 steps/epoch)."""
    return write_tensors_dir(tmp_path_factory.mktemp("tensors17"), tiny_dit, 17)
