"""Settings every test needs (no network, no telemetry) and the shared model fixtures."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Tests never download: a hub call must fail at once, not wait on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "tiny-acestep-v15-turbo"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The upstream-generated tiny turbo checkpoint (official layout) with its references."""
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_DIR / "reference.safetensors")


@pytest.fixture(scope="session")
def fixture_bundle():
    """The fixture loaded in fp32 (references are the fp32 forward of its bf16 weights).
    Shared read-only: tests that modify a model load their own."""
    from acestep.models import load_acestep

    return load_acestep(FIXTURE_DIR, dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A tiny random checkpoints directory written by `acestep.models.tiny` (shared, read-only)."""
    from acestep.models.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))
