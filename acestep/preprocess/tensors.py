"""The preprocessed tensors directory: its per-sample files, and a reader (its manifest: `manifest.py`).

    TENSORS_DIR/
      manifest.json           format version, model fingerprint, trigger tag, settings,
                              samples (id, source, tensors, frames, duration, ...), failed (source, reason)
      <id>.safetensors        target_latents [frames, 64] fp32, encoder_hidden_states [L, H],
                              encoder_attention_mask [L] (bool)

Context latents are not stored: training rebuilds them from the checkpoint's silence latent.
Every write is atomic (temporary file, then rename), so a stop at any moment leaves either the
old file or the new one. Files are read through safetensors' memory map, one sample at a time,
so memory does not grow with the size of the dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from acestep.errors import PreprocessError
from acestep.files import write_atomically, write_failure
from acestep.preprocess.manifest import Manifest, read_manifest

TENSOR_KEYS = ("target_latents", "encoder_hidden_states", "encoder_attention_mask")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (`write_atomically`: a temporary file in the same
    folder, renamed over `path`). A write that fails (a full disk) is a `PreprocessError` that
    says what to do; the files written before are untouched, and the next run skips them."""
    path = Path(path)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    try:
        return write_atomically(path, data)
    except OSError as exc:
        raise PreprocessError(f"Could not write {path}: {write_failure(exc)}. The samples written before are "
                              "kept; fix this (free some space) and run preprocess again: it skips them.") from exc


def load_tensors(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Read the named tensors of a file (memory-mapped); `PreprocessError` names a damaged or
    foreign file."""
    try:
        with safe_open(path, framework="pt") as handle:
            missing = [key for key in keys if key not in set(handle.keys())]
            if missing:
                raise PreprocessError(f"{path} lacks {missing}: it was not written by this trainer.")
            return {key: handle.get_tensor(key) for key in keys}
    except (SafetensorError, OSError) as exc:
        raise PreprocessError(f"{path} could not be read ({exc}); preprocess the dataset again.") from exc


def write_sample(directory: Path, file_name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write one sample's tensors (the three `TENSOR_KEYS`) atomically as `<directory>/<file_name>`."""
    if sorted(tensors) != sorted(TENSOR_KEYS):
        raise ValueError(f"a sample holds exactly {TENSOR_KEYS}, got {sorted(tensors)}")
    return save_tensors(Path(directory) / file_name, tensors, metadata)


def read_sample(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path, TENSOR_KEYS)


class PreprocessedDataset:
    """The samples of a tensors directory, read one at a time from disk.

    Item i is a dict with the three tensors plus `id` and `frames`. Nothing is cached, so the
    memory held is that of the samples in use, whatever the dataset's size.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        absent = [s.tensors for s in self.manifest.samples if not (self.directory / s.tensors).is_file()]
        if absent:
            raise PreprocessError(f"{self.directory} lacks tensor file(s) its manifest lists: {absent[:5]}. "
                                  "Run preprocess again: finished samples are kept.")

    def __len__(self) -> int:
        return len(self.manifest.samples)

    def __getitem__(self, index: int) -> dict:
        entry = self.manifest.samples[index]
        item = read_sample(self.directory / entry.tensors)
        if item["target_latents"].shape[0] != entry.frames:
            raise PreprocessError(f"{self.directory / entry.tensors} holds {item['target_latents'].shape[0]} frames, "
                                  f"the manifest says {entry.frames}; preprocess again.")
        return {**item, "id": entry.id, "frames": entry.frames}

    @property
    def frames(self) -> list[int]:
        """Latent length of every sample (for length-grouped batching)."""
        return [entry.frames for entry in self.manifest.samples]


def check_model_matches(manifest: Manifest, fingerprint: str, weights_digest: str, directory: Path,
                        checkpoint: str | Path = "this checkpoint") -> None:
    """Refuse tensors made with another checkpoint (`checkpoint` names the one in use): their
    condition vectors would be wrong. The message names what differs: the architecture (config
    fingerprint) or, with the same one, the condition encoder's weights (a fine-tuned or merged
    model)."""
    made_with = manifest.model
    if made_with.get("fingerprint") != fingerprint:
        difference = (f"another architecture (config fingerprint {made_with.get('fingerprint', '?')}, "
                      f"not {fingerprint})")
    elif made_with.get("weights_digest") != weights_digest:
        difference = ("the same architecture but other condition-encoder weights (a fine-tuned or merged "
                      "model?)")
    else:
        return
    raise PreprocessError(
        f"The tensors in {directory} were made with {made_with.get('checkpoint', '?')} (variant "
        f"{made_with.get('variant', '?')}), not with {checkpoint}: {difference}. Train with the checkpoint "
        "they were made with, or preprocess the dataset again with this one into another folder."
    )
