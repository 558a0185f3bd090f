"""The manifest of a preprocessed tensors directory (`manifest.json`): format version, model
fingerprint, trigger tag, settings, the samples (id, source, tensors file, frames, duration, ...)
and the files that failed. JSON only, no torch: the web app and `acestep-trainer gpu` read it
without loading torch (`acestep.preprocess.tensors` holds the tensors)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from acestep.errors import PreprocessError
from acestep.files import write_atomically

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


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
