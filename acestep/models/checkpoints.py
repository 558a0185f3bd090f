"""Where models live: the checkpoints directory, the official registry, and downloads.

The checkpoints directory mirrors the official ACE-Step layout (`checkpoints/acestep-v15-turbo`,
`checkpoints/vae`, `checkpoints/Qwen3-Embedding-0.6B`, ...), so a folder users already have from
the official app works as it is. Wherever a model is named, a local path, a folder name inside
the checkpoints directory, or a Hugging Face id (`org/name`) is accepted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from acestep.errors import CheckpointError, CheckpointNotFoundError, DownloadError
from acestep.files import is_disk_full

CHECKPOINTS_DIR_ENV = "ACESTEP_CHECKPOINTS_DIR"
MAIN_REPO = "ACE-Step/Ace-Step1.5"

# Kinds of model folders the trainer uses.
DIT = "dit"
VAE = "vae"
TEXT_ENCODER = "text_encoder"
LM = "lm"
LABELLER = "labeller"  # the Qwen2.5-Omni captioner and transcriber


@dataclass(frozen=True)
class OfficialModel:
    """One downloadable model: its folder name under the checkpoints directory, where it lives
    on the Hub (a repo, or a subfolder of the main repo), and its kind."""

    name: str
    repo_id: str
    kind: str
    subfolder: str | None = None
    description: str = ""
    size: str = ""  # download size in words (published file sizes, or parameters x 2 bytes for bf16)

    @property
    def hf_id(self) -> str:
        return self.repo_id if self.subfolder is None else f"{self.repo_id}/{self.subfolder}"


def _dit(name: str, description: str, size: str = "4.8 GB") -> OfficialModel:
    return OfficialModel(name, f"ACE-Step/{name}", DIT, description=description, size=size)


OFFICIAL_MODELS: tuple[OfficialModel, ...] = (
    OfficialModel("acestep-v15-turbo", MAIN_REPO, DIT, "acestep-v15-turbo", "2B turbo DiT (default)", "4.8 GB"),
    OfficialModel("vae", MAIN_REPO, VAE, "vae", "Oobleck VAE, 48 kHz, 25 latent frames/s", "337 MB"),
    OfficialModel("Qwen3-Embedding-0.6B", MAIN_REPO, TEXT_ENCODER, "Qwen3-Embedding-0.6B", "text encoder", "1.2 GB"),
    OfficialModel("acestep-5Hz-lm-1.7B", MAIN_REPO, LM, "acestep-5Hz-lm-1.7B", "5 Hz LM (auto-labelling)", "3.7 GB"),
    _dit("acestep-v15-base", "2B base DiT"),
    _dit("acestep-v15-sft", "2B SFT DiT"),
    _dit("acestep-v15-turbo-shift1", "2B turbo, shift 1"),
    _dit("acestep-v15-turbo-shift3", "2B turbo, shift 3"),
    _dit("acestep-v15-turbo-continuous", "2B turbo, continuous shift"),
    _dit("acestep-v15-xl-base", "4B XL base DiT", "about 19 GB"),
    _dit("acestep-v15-xl-sft", "4B XL SFT DiT", "about 19 GB"),
    _dit("acestep-v15-xl-turbo", "4B XL turbo DiT", "about 19 GB"),
    OfficialModel("acestep-5Hz-lm-0.6B", "ACE-Step/acestep-5Hz-lm-0.6B", LM, description="5 Hz LM, small",
                  size="about 1.3 GB"),
    OfficialModel("acestep-5Hz-lm-4B", "ACE-Step/acestep-5Hz-lm-4B", LM, description="5 Hz LM, large",
                  size="about 8.4 GB"),
    OfficialModel("acestep-captioner", "ACE-Step/acestep-captioner", LABELLER,
                  description="AI captioner (Qwen2.5-Omni 7B): style captions", size="about 22 GB"),
    OfficialModel("acestep-transcriber", "ACE-Step/acestep-transcriber", LABELLER,
                  description="lyrics transcriber (Qwen2.5-Omni 7B)", size="about 22 GB"),
)


def download_size(name_or_id: str) -> str:
    """The download size of an official model ("3.7 GB"), or "" when it is not an official one."""
    official = official_model(name_or_id)
    return official.size if official else ""


# Files a complete folder of each kind must hold (weights may instead be sharded, see below).
REQUIRED_FILES = {
    DIT: ("config.json", "model.safetensors", ("silence_latent.pt", "silence_latent.safetensors")),
    VAE: ("config.json", "diffusion_pytorch_model.safetensors"),
    TEXT_ENCODER: ("config.json", "model.safetensors", "tokenizer.json"),
    LM: ("config.json", "model.safetensors"),
    LABELLER: ("config.json", "model.safetensors"),
}


def official_model(name_or_id: str) -> OfficialModel | None:
    """The registry entry for a folder name (`acestep-v15-base`) or HF id
    (`ACE-Step/acestep-v15-base`, `ACE-Step/Ace-Step1.5/vae`), or None."""
    for model in OFFICIAL_MODELS:
        if name_or_id in (model.name, model.hf_id) or (model.subfolder is None and name_or_id == model.repo_id):
            return model
    return None


def default_checkpoints_dir() -> Path:
    """`$ACESTEP_CHECKPOINTS_DIR` when set, else `checkpoints/` in the project folder (beside
    launch.py), so the CLI and the web UI find the same models from any working directory."""
    from acestep.environment import project_root

    configured = os.environ.get(CHECKPOINTS_DIR_ENV, "").strip()
    return Path(configured).expanduser().resolve() if configured else project_root() / "checkpoints"


# A DiT already converted to diffusers' layout (a pipeline folder with model_index.json).
DIFFUSERS_DIT_FILES = (
    "model_index.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "condition_encoder/config.json",
    "condition_encoder/diffusion_pytorch_model.safetensors",
)


def is_diffusers_layout(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def missing_files(folder: Path, kind: str) -> list[str]:
    """Names of the files a folder of this kind lacks (empty when complete).

    Sharded weights (`*.safetensors.index.json` plus every shard it lists) count as present.
    """
    required_files = REQUIRED_FILES[kind]
    if kind == DIT and is_diffusers_layout(folder):
        required_files = DIFFUSERS_DIT_FILES
    absent = []
    for required in required_files:
        alternatives = required if isinstance(required, tuple) else (required,)
        if any((folder / name).is_file() for name in alternatives):
            continue
        shards = _shard_names(folder, alternatives[0])
        if shards is None:
            absent.append(" or ".join(alternatives))
        else:
            absent.extend(name for name in shards if not (folder / name).is_file())
    return absent


def _shard_names(folder: Path, weights_name: str) -> list[str] | None:
    """The shards `<weights_name>.index.json` lists, or None when there is no usable index."""
    index = folder / f"{weights_name}.index.json"
    if not weights_name.endswith(".safetensors") or not index.is_file():
        return None
    try:
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class CheckpointInfo:
    """A model folder found in the checkpoints directory."""

    name: str
    path: Path
    kind: str
    variant: str | None = None
    missing: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return not self.missing and self.problem is None


def detect_kind(folder: Path) -> str | None:
    """Guess what a folder holds from its config files (never from its name)."""
    if is_diffusers_layout(folder):
        return DIT if (folder / "transformer" / "config.json").is_file() else None
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("model_type") == "acestep":
        return DIT
    if config.get("_class_name") == "AutoencoderOobleck":
        return VAE
    if config.get("model_type") == "qwen2_5_omni":
        return LABELLER
    if config.get("model_type") == "qwen3":
        architectures = config.get("architectures") or []
        return LM if any("CausalLM" in a for a in architectures) else TEXT_ENCODER
    return None


def inspect_folder(folder: Path) -> CheckpointInfo | None:
    """Describe one folder, or None when it is not a model folder we know."""
    from acestep.models.config import read_dit_config  # local import: avoids a cycle

    kind = detect_kind(folder)
    if kind is None:
        return None
    info = CheckpointInfo(name=folder.name, path=folder, kind=kind, missing=missing_files(folder, kind))
    if kind == DIT:
        try:
            info.variant = read_dit_config(folder).variant
        except CheckpointError as exc:
            info.problem = str(exc)
    return info


def list_checkpoints(checkpoints_dir: Path | None = None) -> list[CheckpointInfo]:
    """Every model folder directly inside the checkpoints directory, sorted by name."""
    root = Path(checkpoints_dir) if checkpoints_dir else default_checkpoints_dir()
    if not root.is_dir():
        return []
    found = (inspect_folder(child) for child in sorted(root.iterdir()) if child.is_dir())
    return [info for info in found if info is not None]


def resolve_model_path(name_or_path: str | Path, kind: str, checkpoints_dir: Path | None = None,
                       download: bool = False) -> Path:
    """Turn a path, a folder name or an HF id into a complete local model folder.

    Order: an existing path; a folder of that name in the checkpoints directory; an official
    name or HF id (downloaded when `download` is true). Raises `CheckpointNotFoundError` with the
    missing files and the command that fetches them.
    """
    root = Path(checkpoints_dir) if checkpoints_dir else default_checkpoints_dir()
    text = str(name_or_path)
    as_path = Path(text).expanduser()
    if as_path.exists():
        return _require_complete(as_path, kind)
    official = official_model(text)
    local_name = official.name if official else text.rstrip("/").split("/")[-1]
    candidate = root / local_name
    if candidate.is_dir() and not missing_files(candidate, kind):
        return candidate
    looks_like_hub_id = text.count("/") in (1, 2) and not text.startswith((".", "/", "~"))
    if download and (official or looks_like_hub_id):
        return download_model(text, root)
    raise CheckpointNotFoundError(_not_found_message(text, candidate, kind, official))


def _require_complete(folder: Path, kind: str) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; give the model's folder instead.")
    absent = missing_files(folder, kind)
    if absent:
        raise CheckpointNotFoundError(
            f"{folder} is incomplete: missing {', '.join(absent)}. Download it again "
            f"(acestep-trainer download {folder.name} --checkpoints-dir {folder.parent})."
        )
    return folder


def _not_found_message(text: str, candidate: Path, kind: str, official: OfficialModel | None) -> str:
    if candidate.is_dir():
        what = f"{candidate} is incomplete: missing {', '.join(missing_files(candidate, kind))}."
    else:
        needed = ", ".join(" or ".join(f) if isinstance(f, tuple) else f for f in REQUIRED_FILES[kind])
        what = f"Model {text!r} not found: {candidate} does not exist (it must hold {needed})."
    if official:
        how = (f"Get it with: acestep-trainer download {official.name} --checkpoints-dir {candidate.parent}"
               f"  (Hugging Face: {official.hf_id}, {official.size})")
    else:
        how = ("Give the path of a local model folder, or an official name: "
               + ", ".join(m.name for m in OFFICIAL_MODELS if m.kind == kind))
    return f"{what} {how}"


def download_model(name_or_id: str, checkpoints_dir: Path | None = None) -> Path:
    """Download an official model (or any `org/name` repo) into the checkpoints directory.

    Resumable: huggingface_hub keeps partial files and continues them. Progress bars come from
    huggingface_hub. Offline (`HF_HUB_OFFLINE=1`) or unreachable, raises `DownloadError` saying
    which model and how to place it by hand.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    root = Path(checkpoints_dir) if checkpoints_dir else default_checkpoints_dir()
    root.mkdir(parents=True, exist_ok=True)
    official = official_model(name_or_id)
    if official is not None:
        repo_id, subfolder, local_name = official.repo_id, official.subfolder, official.name
    else:
        parts = name_or_id.strip("/").split("/")
        repo_id, subfolder, local_name = "/".join(parts[:2]), "/".join(parts[2:]) or None, parts[-1]
    try:
        if subfolder:
            snapshot_download(repo_id, allow_patterns=[f"{subfolder}/*"], local_dir=root)
        else:
            snapshot_download(repo_id, local_dir=root / local_name)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        source = f"{repo_id}/{subfolder}" if subfolder else repo_id
        if is_disk_full(exc):
            size = f" ({official.size})" if official is not None else ""
            raise DownloadError(
                f"The disk is full: could not download {source}{size} into {root / local_name}. Free some space "
                f"(or pass --checkpoints-dir on another disk) and run the command again: finished files are kept "
                f"and partial ones resume.") from exc
        reason = " ".join(str(exc).split()).rstrip(".")
        by_hand = (f"hf download {repo_id} --include '{subfolder}/*' --local-dir {root}" if subfolder
                   else f"hf download {repo_id} --local-dir {root / local_name}")
        raise DownloadError(
            f"Could not download {source} into {root / local_name}: {reason}. Check the network (and that "
            f"HF_HUB_OFFLINE is not set) and run the command again: finished files are kept and partial "
            f"ones resume. Or fetch it elsewhere with `{by_hand}` and copy the folder there."
        ) from exc
    return root / local_name
