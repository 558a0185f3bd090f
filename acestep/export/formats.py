"""Export a trained adapter for the tools people generate music with.

    peft        folder: adapter_config.json + adapter_model.safetensors, official module names
                (`base_model.model.layers.N.self_attn.q_proj`), what official ACE-Step loads with
                `PeftModel.from_pretrained` on the decoder (and ComfyUI reads as "official" LoRAs)
    comfyui     one file: `lora_down` / `lora_up` + a per-module `.alpha`, so ComfyUI applies
                alpha / r and not 1.0
    diffusers   one file: `transformer.`-prefixed diffusers names, the LoRA config (alpha) in
                its `lora_adapter_metadata`, for `AceStepPipeline.load_lora_weights`
    lycoris     one file: LoKr in LyCORIS' own format with the official module names

Every file carries metadata (variant, base fingerprint, rank, alpha, targets, trigger tag, steps,
epochs, date). After writing, each export is loaded back and its output compared with the trained
adapter's; a mismatch is an error. An existing output folder is never replaced without `overwrite`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from acestep.export.lora import (
    DIFFUSERS_METADATA_KEY,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    AdapterError,
    LoraWeights,
    _read_peft_folder,
    load_adapter,
    read_safetensors,
    read_safetensors_header,
)
from acestep.files import is_disk_full, read_json_object, replaced_folder
from acestep.models.convert import rename_module_path_to_original
from acestep.training.run_folders import adapter_kind
from acestep.training.run_layout import LOKR_CONFIG, LOKR_WEIGHTS, TRAINING_METADATA

FORMATS = ("peft", "comfyui", "diffusers", "lycoris")
# What official ACE-Step and ComfyUI load, by adapter kind: ComfyUI's DoRA convention differs from
# PEFT's, and it reads DoRA from the PEFT folder (the web app's Export tab ticks the same).
DEFAULT_FORMATS = {"lora": ("peft", "comfyui"), "dora": ("peft",), "lokr": ("lycoris",)}
VERIFY_ATOL = 1e-5


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    max_difference: dict[str, float] = field(default_factory=dict)


def resolve_adapter_folder(path: str | Path) -> Path:
    """The adapter folder of `path`: a run folder (its `final/`, else its newest checkpoint), a
    checkpoint folder (`.../step-N/adapter`), or an adapter folder itself."""
    from acestep.training.checkpoint import ADAPTER_DIR, latest_checkpoint

    path = Path(path)
    if (path / PEFT_CONFIG).is_file() or (path / LOKR_WEIGHTS).is_file():
        return path
    if (path / ADAPTER_DIR).is_dir():
        return path / ADAPTER_DIR
    if (path / "final").is_dir():
        return path / "final"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / ADAPTER_DIR
    raise AdapterError(f"{path} is neither an adapter folder nor a run folder with final/ or checkpoints.")


def adapter_source(path: str | Path) -> Path:
    """What `load_adapter` reads for `path`: an adapter folder or file as given, or the adapter of a
    run or checkpoint folder (`resolve_adapter_folder`)."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"{path} does not exist; give an adapter folder or file, or a run folder.")
    if path.is_dir() and not ((path / PEFT_CONFIG).is_file() or any(path.glob("*.safetensors"))):
        return resolve_adapter_folder(path)
    return path


def trained_base(adapter: str | Path) -> str | None:
    """The base checkpoint `adapter` (from `adapter_source`) says it was trained on: training's
    metadata beside its weights, or the `acestep.base_checkpoint` field every exported file
    carries; None when it does not say."""
    adapter = Path(adapter)
    base = read_metadata(adapter if adapter.is_dir() else adapter.parent).get("checkpoint")
    files = sorted(adapter.glob("*.safetensors")) if adapter.is_dir() else [adapter]
    if not base and len(files) == 1:
        base = read_safetensors_header(files[0]).get("acestep.base_checkpoint")
    return base or None


def base_checkpoint(adapter: Path, checkpoint: str | Path | None, checkpoints_dir: Path | None = None) -> Path:
    """The DiT folder of `checkpoint` when given, else of the one `adapter` was trained on;
    AdapterError when neither is known, CheckpointNotFoundError (saying where the name came from)
    when it is not on disk."""
    from acestep.errors import CheckpointNotFoundError
    from acestep.models.checkpoints import DIT, resolve_model_path

    if checkpoint:
        return resolve_model_path(checkpoint, DIT, checkpoints_dir)
    trained = trained_base(adapter)
    if not trained:
        raise AdapterError(f"{adapter} does not say which checkpoint it was trained on; give --checkpoint.")
    try:
        return resolve_model_path(trained, DIT, checkpoints_dir)
    except CheckpointNotFoundError as exc:
        raise CheckpointNotFoundError(f"{adapter} was trained on {trained}, which is not found: {exc} "
                                      "Give --checkpoint with the base model's folder.") from exc


# The fields of training_metadata.json / lokr_config.json that export reads, and their types.
METADATA_FIELDS = {"checkpoint": str, "variant": str, "fingerprint": str, "trigger_tag": str, "date": str,
                   "step": int, "epoch": int, "rank": int, "alpha": (int, float), "modules": list}


def _is_field_value(value, kind) -> bool:
    """Whether a metadata value is absent or of the type training writes: no boolean for a number,
    no NUL in a string (it cannot be a path), only strings in a list."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    if isinstance(value, str):
        return "\0" not in value
    return not isinstance(value, list) or all(isinstance(item, str) for item in value)


def read_metadata(folder: Path) -> dict:
    """What training wrote beside the adapter ({} when nothing). Raises AdapterError naming the
    file when it is not a JSON object or a field export uses has the wrong type."""
    for name in (TRAINING_METADATA, LOKR_CONFIG):
        path = Path(folder) / name
        if path.is_file():
            metadata = read_json_object(path, AdapterError, f"{path} cannot be read.")
            for key, kind in METADATA_FIELDS.items():
                value = metadata.get(key)
                if not _is_field_value(value, kind):
                    raise AdapterError(f"{path}: field {key!r} holds {value!r}, not what training writes there. "
                                       "Fix or delete the field (or the file), or export another adapter folder.")
            return metadata
    return {}


def file_metadata(metadata: dict, kind: str, rank: int, alpha: float, targets: list[str]) -> dict[str, str]:
    """The strings every exported file carries in its safetensors header."""
    fields = {"variant": metadata.get("variant", ""), "base_checkpoint": metadata.get("checkpoint", ""),
              "base_fingerprint": metadata.get("fingerprint", ""), "adapter_type": kind, "rank": rank,
              "alpha": alpha, "targets": ",".join(targets), "trigger_tag": metadata.get("trigger_tag", ""),
              "steps": metadata.get("step", ""), "epochs": metadata.get("epoch", ""),
              "date": metadata.get("date", time.strftime("%Y-%m-%dT%H:%M:%S")), "exported_by": "acestep-lora-trainer"}
    return {f"acestep.{k}": str(v) for k, v in fields.items()}


def _official(module: str) -> str:
    return rename_module_path_to_original(module)


def _comfyui_state(weights: LoraWeights) -> dict[str, torch.Tensor]:
    if weights.use_dora:
        raise AdapterError("ComfyUI's DoRA convention differs from PEFT's; export a DoRA adapter as 'peft' "
                           "(ComfyUI also reads official PEFT folders) or 'diffusers'.")
    state = {}
    for module, tensors in weights.modules.items():
        base = f"base_model.model.{_official(module)}"
        state[f"{base}.lora_down.weight"] = tensors["lora_A.weight"].float().contiguous()
        state[f"{base}.lora_up.weight"] = tensors["lora_B.weight"].float().contiguous()
        state[f"{base}.alpha"] = torch.tensor(weights.alphas[module], dtype=torch.float32)
    return state


def _diffusers_state(weights: LoraWeights) -> tuple[dict[str, torch.Tensor], dict]:
    alphas = set(weights.alphas.values())
    ranks = {weights.rank(m) for m in weights.modules}
    if len(alphas) > 1 or len(ranks) > 1:
        raise AdapterError("The diffusers format holds one rank and one alpha; this adapter varies them per module. "
                           "Export it as 'peft'" + ("." if weights.use_dora else " or 'comfyui'."))
    state = {f"transformer.{module}.{suffix}": tensor.float().contiguous()
             for module, tensors in weights.modules.items() for suffix, tensor in tensors.items()}
    config = {"transformer.r": ranks.pop(), "transformer.lora_alpha": alphas.pop(),
              "transformer.target_modules": sorted(weights.modules), "transformer.use_dora": weights.use_dora,
              "transformer.lora_dropout": 0.0, "transformer.bias": "none", "transformer.init_lora_weights": True}
    return state, config


def _write_peft(source: Path, target: Path, meta: dict[str, str], metadata: dict) -> Path:
    target.mkdir(parents=True)
    state, header = read_safetensors(source / PEFT_WEIGHTS)
    save_file({k: v.contiguous() for k, v in state.items()}, target / PEFT_WEIGHTS,
              metadata={**header, "format": "pt", **meta})
    shutil.copy2(source / PEFT_CONFIG, target / PEFT_CONFIG)
    (target / TRAINING_METADATA).write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
    return target


def _lycoris_state(source: Path, transformer) -> dict[str, torch.Tensor]:
    from acestep.export.lokr import to_official_names

    state, _ = read_safetensors(source / LOKR_WEIGHTS)
    return {k: v.float().contiguous() for k, v in to_official_names(state, transformer).items()}


def export_adapter(source: str | Path, out_dir: str | Path, formats: tuple[str, ...] | None = None,
                   name: str | None = None, overwrite: bool = False, verify: bool = True,
                   checkpoint: str | Path | None = None, checkpoints_dir: Path | None = None) -> ExportResult:
    """Write the adapter of `source` (a run, checkpoint or adapter folder) in `formats` (default:
    `default_formats`: peft and comfyui; DoRA: peft; LoKr: lycoris) into `out_dir`.
    `checkpoint` names the base DiT (default: the one the adapter was trained on), used to map
    LoKr names and to verify.
    Raises `AdapterError`; nothing existing is deleted unless `overwrite`, and a failed export
    removes only what it wrote."""
    from acestep.models.load import load_acestep

    folder = resolve_adapter_folder(source)
    lokr = (folder / LOKR_WEIGHTS).is_file()
    formats = formats or default_formats(folder)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise AdapterError(f"Unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}.")
    metadata = read_metadata(folder)
    if lokr and set(formats) - {"lycoris"}:
        raise AdapterError(f"{folder} holds a LoKr adapter: it exports as 'lycoris' only.")
    if not lokr and "lycoris" in formats:
        raise AdapterError(f"{folder} holds a LoRA/DoRA adapter: 'lycoris' is for LoKr adapters.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise AdapterError(f"{out_dir} is not empty; choose another folder or pass --overwrite.")
    base_name = name or _default_name(folder, metadata)
    base = base_checkpoint(folder, checkpoint, checkpoints_dir)
    transformer = load_acestep(base, dtype=torch.float32, components=("transformer",)).transformer
    try:
        with replaced_folder(out_dir, "exporting") as tmp:  # an earlier export is kept until this one is whole
            result = ExportResult(out_dir=tmp, metadata=metadata)
            _write_formats(folder, tmp, formats, base_name, metadata, transformer, result)
            if verify:
                verify_exports(folder, result, transformer)
    except BaseException as exc:
        raise_if_disk_full(exc, out_dir)
        raise
    result.out_dir = out_dir
    result.files = {kind: out_dir / path.relative_to(tmp) for kind, path in result.files.items()}
    return result


def default_formats(folder: Path) -> tuple[str, ...]:
    """The formats the adapter in `folder` exports to when none are asked for: `DEFAULT_FORMATS`
    of its kind (a PEFT config that cannot be read is refused when the adapter is read)."""
    return DEFAULT_FORMATS[adapter_kind(folder)]


def raise_if_disk_full(exc: BaseException, out_dir: Path) -> None:
    """After a failed export or merge into `out_dir` (whose partial files are removed already, and
    whose earlier contents are kept): an `AdapterError` that says so when the disk was full."""
    if is_disk_full(exc):
        raise AdapterError(f"The disk is full: could not write {out_dir}. Nothing of this attempt was left there "
                           "and what was there before is untouched; free some space and run the command again."
                           ) from exc


def _default_name(folder: Path, metadata: dict) -> str:
    tag = metadata.get("trigger_tag") or "adapter"
    step = metadata.get("step")
    return f"{tag}-step{step}" if step not in (None, "") else tag


def _write_formats(folder: Path, out_dir: Path, formats, base_name: str, metadata: dict, transformer,
                   result: ExportResult) -> None:
    if "lycoris" in formats:
        meta = file_metadata(metadata, "lokr", int(metadata.get("rank", 0)), float(metadata.get("alpha", 0)),
                             list(metadata.get("modules", [])))
        path = out_dir / f"{base_name}_lycoris.safetensors"
        save_file(_lycoris_state(folder, transformer), path, metadata={"format": "pt", **meta})
        result.files["lycoris"] = path
        return
    weights = _read_peft_folder(folder)
    rank = max(weights.rank(m) for m in weights.modules)
    alpha = max(weights.alphas.values())
    kind = "dora" if weights.use_dora else "lora"
    meta = file_metadata(metadata, kind, rank, alpha, sorted({_official(m).split(".")[-1] for m in weights.modules}))
    if "peft" in formats:
        result.files["peft"] = _write_peft(folder, out_dir / "peft", meta, metadata)
    if "comfyui" in formats:
        path = out_dir / f"{base_name}_comfyui.safetensors"
        save_file(_comfyui_state(weights), path, metadata={"format": "pt", **meta})
        result.files["comfyui"] = path
    if "diffusers" in formats:
        state, config = _diffusers_state(weights)
        path = out_dir / f"{base_name}_diffusers.safetensors"
        save_file(state, path, metadata={"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(config), **meta})
        result.files["diffusers"] = path


def verification_inputs(transformer) -> dict[str, torch.Tensor]:
    """Fixed random inputs for comparing two adapters' outputs."""
    generator = torch.Generator().manual_seed(1234)
    width = transformer.condition_embedder.in_features
    return {"hidden_states": torch.randn(1, 16, 64, generator=generator), "timestep": torch.tensor([0.6]),
            "timestep_r": torch.tensor([0.6]), "encoder_hidden_states": torch.randn(1, 8, width, generator=generator),
            "context_latents": torch.randn(1, 16, 128, generator=generator)}


def remove_adapter(transformer) -> None:
    """Take every adapter off `transformer` (PEFT or LyCORIS), leaving the base model."""
    from acestep.export.lokr import NETWORK_ATTRIBUTE, attached_network

    network = attached_network(transformer)
    if network is not None:
        network.restore()
        del transformer.__dict__[NETWORK_ATTRIBUTE]
    if getattr(transformer, "_hf_peft_config_loaded", False):
        transformer.delete_adapters(list(transformer.peft_config))


@torch.no_grad()
def adapter_output(transformer, adapter: Path) -> torch.Tensor:
    load_adapter(transformer, adapter)
    transformer.eval()
    try:
        return transformer(**verification_inputs(transformer)).sample
    finally:
        remove_adapter(transformer)


def verify_exports(source: Path, result: ExportResult, transformer) -> None:
    """Load each export back and compare its output with the trained adapter's."""
    lokr = (source / LOKR_WEIGHTS).is_file()
    reference = adapter_output(transformer, source / LOKR_WEIGHTS if lokr else source)
    for kind, path in result.files.items():
        difference = (adapter_output(transformer, path) - reference).abs().max().item()
        result.max_difference[kind] = difference
        if not difference <= VERIFY_ATOL:
            raise AdapterError(f"The {kind} export {path} does not reproduce the trained adapter (max difference "
                               f"{difference:.3g} > {VERIFY_ATOL}); it was removed.")
