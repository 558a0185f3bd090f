"""Strict, explicit weight loading: read safetensors files and fill a module built on the meta
device, refusing any missing, unexpected or mis-shaped tensor.

No code inside a checkpoint is ever executed: weights come from safetensors, and the only
non-safetensors file we accept (the official `silence_latent.pt`) is read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from acestep.errors import CheckpointError

_SHOWN_KEYS = 8  # how many offending keys an error message lists before "and N more"


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with parameters on the meta device (no memory, no random init) while
    buffers stay real: diffusers keeps small non-persistent tables (FSQ levels) in buffers that
    no checkpoint stores."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def weight_files(folder: Path, weights_name: str) -> list[Path]:
    """The safetensors file(s) holding a folder's weights: `weights_name`, or the shards that
    `<weights_name>.index.json` lists. Raises `CheckpointError` when neither exists."""
    single = folder / weights_name
    if single.is_file():
        return [single]
    index = folder / f"{weights_name}.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc}).") from exc
        absent = [name for name in shards if not (folder / name).is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) that are missing: {', '.join(absent)}.")
        return [folder / name for name in shards]
    raise CheckpointError(f"{single} does not exist (nor a sharded {index.name}); download the model again.")


class SafetensorsIndex:
    """Which file holds which tensor, read from the headers only (nothing is loaded yet)."""

    def __init__(self, files: Iterable[Path]):
        self.location: dict[str, Path] = {}
        for path in files:
            for key in _header_keys(path):
                if key in self.location:
                    raise CheckpointError(f"Tensor {key!r} appears in both {self.location[key]} and {path}.")
                self.location[key] = path

    def keys(self) -> list[str]:
        return list(self.location)

    def load(self, keys: Iterable[str], dtype: torch.dtype | None,
             device: str | torch.device) -> dict[str, torch.Tensor]:
        """Read the given tensors, cast floating ones to `dtype`, place them on `device`."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.location[key], []).append(key)
        tensors: dict[str, torch.Tensor] = {}
        for path, file_keys in by_file.items():
            try:
                with safe_open(path, framework="pt", device=str(device)) as handle:
                    for key in file_keys:
                        tensor = handle.get_tensor(key)
                        if dtype is not None and tensor.is_floating_point():
                            tensor = tensor.to(dtype)
                        tensors[key] = tensor
            except (SafetensorError, OSError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{path} could not be read ({exc}); the file is damaged, download it again."
                ) from exc
        return tensors


def _header_keys(path: Path) -> list[str]:
    try:
        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it is truncated or damaged, download it again."
        ) from exc
    return keys


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def check_state_dict(module: nn.Module, provided: dict[str, torch.Size], source: str,
                     skip: Iterable[str] = ()) -> None:
    """Raise `CheckpointError` naming `source` unless `provided` (key -> shape) matches the
    module's state dict exactly: no missing key, no unexpected key, no shape difference.
    Keys in `skip` (tensors the caller handles itself) are left out on both sides."""
    skipped = set(skip)
    expected = {k: v.shape for k, v in module.state_dict().items() if k not in skipped}
    provided = {k: v for k, v in provided.items() if k not in skipped}
    missing = expected.keys() - provided.keys()
    unexpected = provided.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s): {_listing(unexpected)}")
    wrong = [f"{k} is {tuple(provided[k])}, expected {tuple(expected[k])}"
             for k in sorted(expected.keys() & provided.keys()) if tuple(provided[k]) != tuple(expected[k])]
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong[:_SHOWN_KEYS])
                        + (f" and {len(wrong) - _SHOWN_KEYS} more" if len(wrong) > _SHOWN_KEYS else ""))
    if problems:
        raise CheckpointError(
            f"{source} does not match the {type(module).__name__} its config describes: "
            + "; ".join(problems) + ". The weights belong to another model or another version of it."
        )


def header_shapes(index: SafetensorsIndex, keys: Iterable[str]) -> dict[str, torch.Size]:
    """Shapes of the given tensors, read from the file headers without loading data."""
    shapes: dict[str, torch.Size] = {}
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(index.location[key], []).append(key)
    for path, file_keys in by_file.items():
        with safe_open(path, framework="pt") as handle:
            for key in file_keys:
                shapes[key] = torch.Size(handle.get_slice(key).get_shape())
    return shapes


def fill_module(module: nn.Module, tensors: dict[str, torch.Tensor], device: str | torch.device) -> nn.Module:
    """Assign checked tensors to a meta-built module, move its buffers, freeze it, set eval."""
    module.load_state_dict(tensors, strict=True, assign=True)
    module.to(device)
    module.requires_grad_(False)
    return module.eval()


def load_silence_latent(folder: Path, channels: int) -> torch.Tensor:
    """Read `silence_latent.safetensors` or the official `silence_latent.pt` (tensor only,
    `weights_only=True`) and return it time-major, `[1, frames, channels]`, in fp32."""
    st_path, pt_path = folder / "silence_latent.safetensors", folder / "silence_latent.pt"
    if st_path.is_file():
        try:
            with safe_open(st_path, framework="pt") as handle:
                keys = list(handle.keys())
                if keys != ["silence_latent"]:
                    raise CheckpointError(f"{st_path} must hold one tensor named 'silence_latent', found {keys}.")
                latent = handle.get_tensor("silence_latent")
        except SafetensorError as exc:
            raise CheckpointError(f"{st_path} is damaged ({exc}); download it again.") from exc
        source = st_path
    elif pt_path.is_file():
        try:
            latent = torch.load(pt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything but plain tensors and containers
            raise CheckpointError(
                f"{pt_path} could not be read as a plain tensor file ({type(exc).__name__}: {exc}). "
                "It is damaged or not the official file; download it again."
            ) from exc
        source = pt_path
    else:
        raise CheckpointError(
            f"{folder} has no silence_latent.pt or silence_latent.safetensors; training needs it to "
            "build the context latents. Download the checkpoint folder again."
        )
    well_formed = isinstance(latent, torch.Tensor) and latent.ndim == 3 and latent.shape[0] == 1
    if not well_formed or channels not in latent.shape[1:]:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise CheckpointError(f"{source} holds {shape}; expected a tensor [1, {channels}, frames] (channel-first).")
    # Official files are channel-first [1, 64, frames]; accept an already time-major one too.
    if latent.shape[1] == channels and latent.shape[2] != channels:
        latent = latent.transpose(1, 2)
    return latent.float().contiguous()
