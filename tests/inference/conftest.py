"""Renderers and adapted transformers on the tiny checkpoints, for the preview tests."""

from pathlib import Path

import pytest
import torch

from acestep.inference import PreviewRenderer
from acestep.models import load_acestep
from acestep.training.adapters import add_adapter


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """The tiny models run a few hundred microsecond-sized ops per render; on a busy CPU, waking a
    second thread for each costs ten times the op (measured: 67 ms vs 7 ms per forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def turbo_dit(tiny_checkpoints) -> Path:
    return tiny_checkpoints / "acestep-v15-turbo"


@pytest.fixture(scope="session")
def base_checkpoints(tiny_checkpoints, tmp_path_factory) -> Path:
    """A checkpoints folder with a tiny *base* DiT (is_turbo false) beside the tiny VAE and text encoder."""
    from acestep.models.tiny import TINY_DIT_CONFIG, write_dit_checkpoint

    root = tmp_path_factory.mktemp("base_checkpoints")
    for name in ("vae", "Qwen3-Embedding-0.6B"):
        (root / name).symlink_to(tiny_checkpoints / name, target_is_directory=True)
    silence = load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.float32, components=()).silence_latent
    config = {**TINY_DIT_CONFIG, "is_turbo": False, "model_version": "base"}
    write_dit_checkpoint(root / "acestep-v15-base", config, torch.Generator().manual_seed(5), silence)
    return root


@pytest.fixture(scope="session")
def turbo_renderer(turbo_dit) -> PreviewRenderer:
    """Shared: rendering only adds to its condition cache."""
    return PreviewRenderer(turbo_dit, device="cpu", dtype="fp32")


def load_transformer(dit: Path):
    return load_acestep(dit, dtype=torch.float32, components=("transformer",)).transformer


def perturb_adapter(adapter, seed: int = 11, scale: float = 0.5) -> None:
    """Give a fresh adapter (LoRA B is zero at init) weights that change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def adapted(dit: Path, kind: str = "lora", seed: int = 11):
    """A freshly loaded fp32 transformer with a perturbed adapter of `kind`, and the adapter."""
    transformer = load_transformer(dit)
    adapter = add_adapter(transformer, kind, rank=4, alpha=8.0, dropout=0.0)
    perturb_adapter(adapter, seed)
    return transformer, adapter


@pytest.fixture(scope="session")
def turbo_lora(turbo_dit):
    """(transformer, adapter): read-only for tests that restore what they change."""
    return adapted(turbo_dit)
