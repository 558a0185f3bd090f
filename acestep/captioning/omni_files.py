"""Where the captioner and transcriber checkpoints are, and what in them the labeller reads.

A model is named by a local folder, a folder name in the checkpoints directory, or a Hugging Face
id ("org/name", also the registry names "acestep-captioner" / "acestep-transcriber"), which is
downloaded into `<checkpoints>/<name>` on first use. Only JSON, tokenizer and safetensors files
are read; the repos' `spk_dict.pt` (a pickle, for the speaking talker) is not.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from acestep.errors import CheckpointError, CheckpointNotFoundError, DownloadError

CAPTIONER_REPO = "ACE-Step/acestep-captioner"
TRANSCRIBER_REPO = "ACE-Step/acestep-transcriber"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class OmniModel:
    """One of the two official models: where it lives, what it costs to fetch, how to ask it."""

    repo: str
    folder: str  # its folder under the checkpoints directory
    prompt: str  # the model card's prompt; the audio follows it on the next line

    @property
    def download_size(self) -> str:
        """From the model registry: bf16 weights of about 11 B parameters (thinker, talker, token2wav)."""
        from acestep.models.checkpoints import download_size

        return download_size(self.repo)


MODELS = {
    "captioner": OmniModel(CAPTIONER_REPO, "acestep-captioner", "*Task* Describe this audio in detail"),
    "transcriber": OmniModel(TRANSCRIBER_REPO, "acestep-transcriber", "*Task* Transcribe this audio in detail"),
}


def is_hub_id(source: str) -> bool:
    """An "org/name" id or an official registry name that is not an existing path."""
    from acestep.models.checkpoints import official_model

    if Path(source).expanduser().exists():
        return False
    return bool(_HUB_ID.match(source)) or official_model(source) is not None


def _target(source: str, root: Path) -> Path:
    return root / source.rstrip("/").split("/")[-1]


def local_folder(source: str, root: Path) -> Path | None:
    """The folder the model is in, without downloading: the path as given, or a complete folder
    of that name (the last part of an HF id) in the checkpoints directory. None if absent."""
    as_path = Path(source).expanduser()
    if as_path.exists():
        return as_path
    candidate = _target(source, root)
    return candidate if candidate.is_dir() and not missing_files(candidate) else None


def resolve_folder(source: str, kind: str, root: Path) -> Path:
    """The complete local folder of the model, downloading an HF id into `root` first. Raises
    CheckpointNotFoundError naming what is missing, the download size and the command."""
    folder = local_folder(source, root)
    if folder is not None:
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is a file; give the folder of the {kind} model instead")
        absent = missing_files(folder)
        if absent:
            raise CheckpointNotFoundError(f"{folder} is not a complete {kind} model: missing {', '.join(absent)}. "
                                          f"{how_to_get(kind, source, folder)}")
        return folder
    target = _target(source, root)
    incomplete = f"{target} is incomplete: missing {', '.join(missing_files(target))}" if target.is_dir() else ""
    if not is_hub_id(source):
        what = incomplete or f"it is not a folder, and {target} does not exist"
        raise CheckpointNotFoundError(f"{kind} model {source!r} not found: {what}. "
                                      f"{how_to_get(kind, MODELS[kind].repo, root / MODELS[kind].folder)}")
    from acestep.models.checkpoints import download_model, official_model

    official = official_model(source)
    repo = official.repo_id if official else source
    try:
        folder = download_model(source, root)
    except DownloadError as exc:
        reason = " ".join(str(exc.__cause__ or exc).split())[:300]
        where = incomplete or f"{repo} is not in {target}"
        raise CheckpointNotFoundError(f"{kind} model: {where}, and it could not be downloaded ({reason}). "
                                      f"{how_to_get(kind, repo, target)}") from exc
    # Offline, huggingface_hub hands back an existing local folder as it is, complete or not.
    absent = missing_files(folder)
    if absent:
        raise CheckpointNotFoundError(f"{kind} model: {folder} is incomplete: missing {', '.join(absent)}, and the "
                                      f"download did not complete it (offline?). {how_to_get(kind, repo, folder)}")
    return folder


def how_to_get(kind: str, source: str, folder: Path) -> str:
    """The sentence that says how to fetch the model, with its size when it is an official one."""
    from acestep.models.checkpoints import official_model

    official = official_model(source)
    repo = official.repo_id if official else source if _HUB_ID.match(source) else MODELS[kind].repo
    sizes = {model.repo: model.download_size for model in MODELS.values()}
    return (f"Download {repo} ({sizes.get(repo, 'size unknown')}) with `hf download {repo} --local-dir {folder}` "
            "(or run this again with network access), or give the path of a local copy.")


def missing_files(folder: Path) -> list[str]:
    """Files a Qwen2.5-Omni folder needs that `folder` lacks (sharded weights count when every
    shard the index lists is there)."""
    absent = [name for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json")
              if not (folder / name).is_file()]
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        absent.append("tokenizer.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return [*absent, f"{index.name} (unreadable)"]
        absent.extend(name for name in shards if not (folder / name).is_file())
    elif not (folder / "model.safetensors").is_file():
        absent.append("model.safetensors")
    return absent


def check_model_type(folder: Path, kind: str) -> None:
    """Raise CheckpointError unless `folder/config.json` is a Qwen2.5-Omni config."""
    path = folder / "config.json"
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON config ({exc}); download the model again") from exc
    if model_type not in ("qwen2_5_omni", "qwen2_5_omni_thinker"):
        raise CheckpointError(f"{path} has model_type {model_type!r}: the {kind} needs a Qwen2.5-Omni checkpoint "
                              f"such as {MODELS[kind].repo} (model_type 'qwen2_5_omni')")


def model_identity(source: str, root: Path) -> dict:
    """What names the model's weights, for a cache key: the resolved folder, sha256 of its
    config.json, the Hub commit it was downloaded at and its weight files' names and sizes; for an
    HF id not downloaded yet, the id."""
    folder = local_folder(source, root)
    if folder is None or not folder.is_dir():
        return {"hub_id": source, "revision": "main"}
    config = folder / "config.json"
    return {
        "path": str(folder.resolve()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "revision": _hub_revision(folder),
        "weights": sorted((path.name, path.stat().st_size) for path in folder.glob("*.safetensors")),
    }


def _hub_revision(folder: Path) -> str | None:
    """The commit huggingface_hub downloaded `folder` at (its local-dir metadata), if recorded."""
    metadata = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
    try:
        return metadata.read_text(encoding="utf-8").split("\n", 1)[0].strip() or None
    except OSError:
        return None


def load_processor(folder: Path):
    """transformers' Qwen2AudioProcessor from the checkpoint's tokenizer, Whisper feature extractor
    and chat template: the audio half of Qwen2_5OmniProcessor (same feature padding, same count
    of audio tokens), without the video processor that needs torchvision."""
    from transformers import Qwen2AudioProcessor, Qwen2TokenizerFast, WhisperFeatureExtractor

    tokenizer = Qwen2TokenizerFast.from_pretrained(folder)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(folder)
    return Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                               chat_template=_chat_template(folder, tokenizer))


def _chat_template(folder: Path, tokenizer) -> str:
    """The checkpoint's chat template: chat_template.jinja, chat_template.json or the tokenizer's."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        try:
            return json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder / 'chat_template.json'} has no readable 'chat_template' ({exc}); "
                                  "download the model again") from exc
    if isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
        return tokenizer.chat_template
    raise CheckpointError(f"{folder} has no chat template (chat_template.jinja, chat_template.json or "
                          "'chat_template' in tokenizer_config.json); download the model again")
