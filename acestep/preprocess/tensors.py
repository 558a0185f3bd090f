"""The preprocessed tensors directory: its manifest, its per-sample files, and a reader.

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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from acestep.errors import PreprocessError
from acestep.files import write_atomically, write_failure

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TENSOR_KEYS = ("target_latents", "encoder_hidden_states", "encoder_attention_mask")


@dataclass
class ManifestSample:
    """One preprocessed sample. `key` hashes everything its tensors depend on (audio bytes,
    labels, prompt settings, model), so a re-run skips it only when nothing changed."""

    id: str
    source: str
    tensors: str
    frames: int
    duration: float
    source_hash: str
    key: str
    caption: str = ""


@dataclass
class ManifestFailure:
    source: str
    reason: str


@dataclass
class Manifest:
    model: dict
    settings: dict
    trigger_tag: str = ""
    tag_position: str = "prepend"
    dataset: str = ""
    samples: list[ManifestSample] = field(default_factory=list)
    failed: list[ManifestFailure] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"format_version": data.pop("format_version"), **data}


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    write_atomically(path, json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", PreprocessError,
                     "manifest")
    return path


def read_manifest(directory: Path) -> Manifest:
    """Read and validate `<directory>/manifest.json`; `PreprocessError` names what is wrong."""
    path = Path(directory) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PreprocessError(f"{path} does not exist: {directory} is not a preprocessed tensors folder "
                              "(run `acestep-trainer preprocess` first).") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise PreprocessError(f"{path} is not valid JSON ({exc}); preprocess again into an empty folder.") from exc
    if not isinstance(data, dict):
        raise PreprocessError(f"{path} is not a JSON object.")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise PreprocessError(f"{path} has format_version {version!r}; this trainer reads version "
                              f"{FORMAT_VERSION}. Preprocess the dataset again.")
    try:
        return Manifest(
            model=dict(data["model"]), settings=dict(data["settings"]),
            trigger_tag=str(data.get("trigger_tag", "")), tag_position=str(data.get("tag_position", "prepend")),
            dataset=str(data.get("dataset", "")),
            samples=[ManifestSample(**entry) for entry in data.get("samples", [])],
            failed=[ManifestFailure(**entry) for entry in data.get("failed", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PreprocessError(f"{path} is malformed ({type(exc).__name__}: {exc}); preprocess again.") from exc


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


def check_model_matches(manifest: Manifest, fingerprint: str, weights_digest: str, directory: Path) -> None:
    """Refuse tensors made with another checkpoint: their condition vectors would be wrong."""
    made_with = manifest.model
    if made_with.get("fingerprint") != fingerprint or made_with.get("weights_digest") != weights_digest:
        raise PreprocessError(
            f"The tensors in {directory} were made with {made_with.get('checkpoint', '?')} "
            f"(variant {made_with.get('variant', '?')}, fingerprint {made_with.get('fingerprint', '?')}), "
            f"not with this checkpoint (fingerprint {fingerprint}). Preprocess the dataset again with this "
            "checkpoint into another folder."
        )
