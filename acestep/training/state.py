"""Nested training state (optimizer and scheduler state dicts, RNG states, counters) stored
without pickle: tensors go to a safetensors file, the structure to JSON.

A structure is encoded as JSON values where tensors are replaced by `{"__tensor__": key}`,
tuples by `{"__tuple__": [...]}` and dicts with non-string keys by `{"__dict__": [[k, v], ...]}`,
so optimizer state (integer parameter ids) round-trips exactly, bit for bit. `rng_states` and
`restore_rng` take and put back the random generators' states that go with it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from acestep.errors import TrainingError


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return _encode(torch.from_numpy(value.copy()), tensors, path)
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__tensor__" not in value:
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__dict__": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}[{k}]")]
                             for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, path) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}[]") for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TrainingError(f"cannot store {type(value).__name__} at {path} in a training checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
    if "__float__" in value:
        return float(value["__float__"])
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_state(state: dict[str, Any], folder: Path, name: str = "state") -> None:
    """Write `state` as `<name>.json` + `<name>.safetensors` in `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, name)
    save_file(tensors, Path(folder) / f"{name}.safetensors")
    (Path(folder) / f"{name}.json").write_text(json.dumps(structure) + "\n", encoding="utf-8")


def load_state_entry(folder: Path, key: str, name: str = "state") -> Any:
    """One entry of a state written by `save_state` that holds no tensors (None when absent),
    read from `<name>.json` alone; `TrainingError` names a damaged file."""
    path = Path(folder) / f"{name}.json"
    try:
        return _decode(json.loads(path.read_text(encoding="utf-8")).get(key), {})
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise TrainingError(f"The training state in {folder} is damaged ({exc}).") from exc


def load_state(folder: Path, name: str = "state") -> dict[str, Any]:
    """Read a state written by `save_state`; `TrainingError` names a damaged file."""
    folder = Path(folder)
    try:
        tensors = load_file(folder / f"{name}.safetensors")
        structure = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        return _decode(structure, tensors)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise TrainingError(f"The training state in {folder} is damaged ({exc}).") from exc


def rng_states() -> dict:
    """The states of every random number generator training draws from (torch, CUDA, NumPy, Python)."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict) -> None:
    """Put back the generators' states that `rng_states` took (read back from a checkpoint)."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
