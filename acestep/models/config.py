"""Read an ACE-Step 1.5 DiT `config.json`: validate it, name its variant, and derive the
constructor arguments of the diffusers modules that implement it.

The variant (turbo / base / sft, and the XL family) comes from the config's own fields
(`is_turbo`, `model_version`, the encoder widths), never from the folder name: users rename
folders, and a fine-tune of turbo stored as `my-model/` is still a turbo.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acestep.errors import CheckpointError
from acestep.files import read_json_object

ACESTEP_MODEL_TYPE = "acestep"

# Fields every ACE-Step 1.5 DiT config carries; the module shapes are built from them.
REQUIRED_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "in_channels",
    "audio_acoustic_hidden_dim",
    "patch_size",
    "text_hidden_dim",
    "timbre_hidden_dim",
    "num_lyric_encoder_hidden_layers",
    "num_timbre_encoder_hidden_layers",
    "num_attention_pooler_hidden_layers",
    "pool_window_size",
    "fsq_dim",
    "fsq_input_levels",
    "layer_types",
    "sliding_window",
    "rope_theta",
    "rms_norm_eps",
)

# Defaults of the released checkpoints for fields older or hand-written configs may omit.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "fsq_input_num_quantizers": 1,
    "timestep_mu": -0.4,
    "timestep_sigma": 1.0,
    "is_turbo": False,
    "model_version": None,
}


@dataclass(frozen=True)
class AceStepModelConfig:
    """The parsed DiT config of one checkpoint, plus what we derive from it.

    `raw` is the dict exactly as read; the properties give the values the loader needs.
    """

    raw: dict[str, Any]
    source: Path | None = None

    def get(self, key: str) -> Any:
        if key in self.raw:
            return self.raw[key]
        return OPTIONAL_DEFAULTS[key]

    @property
    def hidden_size(self) -> int:
        return int(self.raw["hidden_size"])

    @property
    def encoder_hidden_size(self) -> int:
        """Width of the condition encoder (XL: 2048 feeding a 2560-wide decoder)."""
        return int(self.raw.get("encoder_hidden_size") or self.hidden_size)

    @property
    def encoder_intermediate_size(self) -> int:
        return int(self.raw.get("encoder_intermediate_size") or self.raw["intermediate_size"])

    @property
    def encoder_num_attention_heads(self) -> int:
        return int(self.raw.get("encoder_num_attention_heads") or self.raw["num_attention_heads"])

    @property
    def encoder_num_key_value_heads(self) -> int:
        return int(self.raw.get("encoder_num_key_value_heads") or self.raw["num_key_value_heads"])

    @property
    def is_turbo(self) -> bool:
        return bool(self.get("is_turbo"))

    @property
    def model_version(self) -> str | None:
        version = self.get("model_version")
        return None if version is None else str(version)

    @property
    def is_xl(self) -> bool:
        """XL checkpoints carry separate encoder sizes; their code also prepends the timbre
        special token (the 2B code has that line commented out)."""
        version = (self.model_version or "").lower()
        return version.startswith("xl") or self.encoder_hidden_size != self.hidden_size

    @property
    def variant(self) -> str:
        """`turbo`, `base`, `sft`, or the same with an `xl-` prefix."""
        version = (self.model_version or "").lower()
        # `is_turbo` decides when present: upstream's config class defaults model_version to
        # "turbo", so a base/sft config may carry model_version "turbo" with is_turbo false.
        turbo = self.is_turbo if "is_turbo" in self.raw else "turbo" in version
        if turbo:
            kind = "turbo"
        elif "sft" in version:
            kind = "sft"
        else:
            kind = "base"
        return f"xl-{kind}" if self.is_xl else kind

    @property
    def layer_types(self) -> list[str]:
        """Per-layer attention kind; `use_sliding_window: false` turns every band off."""
        if self.raw.get("use_sliding_window", True) is False:
            return ["full_attention"] * len(self.raw["layer_types"])
        return list(self.raw["layer_types"])

    @property
    def timestep_mu(self) -> float:
        return float(self.get("timestep_mu"))

    @property
    def timestep_sigma(self) -> float:
        return float(self.get("timestep_sigma"))

    @property
    def fingerprint(self) -> str:
        """Short hash of the variant and every architecture setting (not of the weights).

        Built from the derived module arguments, so the same model gives the same fingerprint
        in the official and the diffusers layout.
        """
        architecture = {
            "variant": self.variant,
            "transformer": self.transformer_kwargs(),
            "condition_encoder": self.condition_encoder_kwargs(),
            "audio_tokenizer": self.audio_tokenizer_kwargs(),
            "timestep": [self.timestep_mu, self.timestep_sigma],
        }
        canonical = json.dumps(architecture, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def _shared_attention_kwargs(self) -> dict[str, Any]:
        return {
            "head_dim": int(self.raw["head_dim"]),
            "rope_theta": float(self.raw["rope_theta"]),
            "attention_bias": bool(self.get("attention_bias")),
            "attention_dropout": float(self.get("attention_dropout")),
            "rms_norm_eps": float(self.raw["rms_norm_eps"]),
            "sliding_window": int(self.raw["sliding_window"]),
        }

    def _encoder_width_kwargs(self) -> dict[str, Any]:
        return {
            "hidden_size": self.encoder_hidden_size,
            "intermediate_size": self.encoder_intermediate_size,
            "num_attention_heads": self.encoder_num_attention_heads,
            "num_key_value_heads": self.encoder_num_key_value_heads,
        }

    def transformer_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' `AceStepTransformer1DModel`."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": int(self.raw["intermediate_size"]),
            "num_hidden_layers": int(self.raw["num_hidden_layers"]),
            "num_attention_heads": int(self.raw["num_attention_heads"]),
            "num_key_value_heads": int(self.raw["num_key_value_heads"]),
            "in_channels": int(self.raw["in_channels"]),
            "audio_acoustic_hidden_dim": int(self.raw["audio_acoustic_hidden_dim"]),
            "patch_size": int(self.raw["patch_size"]),
            "layer_types": self.layer_types,
            "encoder_hidden_size": self.encoder_hidden_size,
            "is_turbo": self.is_turbo,
            "model_version": self.model_version,
            **self._shared_attention_kwargs(),
        }

    def condition_encoder_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' `AceStepConditionEncoder` (encoder widths)."""
        return {
            **self._encoder_width_kwargs(),
            "text_hidden_dim": int(self.raw["text_hidden_dim"]),
            "timbre_hidden_dim": int(self.raw["timbre_hidden_dim"]),
            "num_lyric_encoder_hidden_layers": int(self.raw["num_lyric_encoder_hidden_layers"]),
            "num_timbre_encoder_hidden_layers": int(self.raw["num_timbre_encoder_hidden_layers"]),
            "layer_types": self.layer_types,
            **self._shared_attention_kwargs(),
        }

    def audio_tokenizer_kwargs(self) -> dict[str, Any]:
        return {
            **self._encoder_width_kwargs(),
            "audio_acoustic_hidden_dim": int(self.raw["audio_acoustic_hidden_dim"]),
            "pool_window_size": int(self.raw["pool_window_size"]),
            "fsq_dim": int(self.raw["fsq_dim"]),
            "fsq_input_levels": list(self.raw["fsq_input_levels"]),
            "fsq_input_num_quantizers": int(self.get("fsq_input_num_quantizers")),
            "num_attention_pooler_hidden_layers": int(self.raw["num_attention_pooler_hidden_layers"]),
            "layer_types": self.layer_types,
            **self._shared_attention_kwargs(),
        }

    def audio_detokenizer_kwargs(self) -> dict[str, Any]:
        return {
            **self._encoder_width_kwargs(),
            "audio_acoustic_hidden_dim": int(self.raw["audio_acoustic_hidden_dim"]),
            "pool_window_size": int(self.raw["pool_window_size"]),
            "num_attention_pooler_hidden_layers": int(self.raw["num_attention_pooler_hidden_layers"]),
            "layer_types": self.layer_types,
            **self._shared_attention_kwargs(),
        }


def parse_model_config(raw: Any, source: Path | None = None) -> AceStepModelConfig:
    """Validate a config dict as an ACE-Step 1.5 DiT config.

    Raises `CheckpointError` naming the file when it belongs to another model type, lacks a
    field, or holds values the architecture cannot have.
    """
    where = str(source) if source else "the model config"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} is not a JSON object; expected an ACE-Step 1.5 config.json.")
    model_type = raw.get("model_type")
    if model_type != ACESTEP_MODEL_TYPE:
        raise CheckpointError(
            f"{where} has model_type {model_type!r}, not {ACESTEP_MODEL_TYPE!r}: this is not an "
            "ACE-Step 1.5 DiT checkpoint. Point to a folder such as checkpoints/acestep-v15-turbo "
            "(it holds config.json, model.safetensors and silence_latent.pt)."
        )
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise CheckpointError(f"{where} lacks the field(s) {', '.join(missing)}; the file is incomplete.")
    _check_consistency(raw, where)
    return AceStepModelConfig(raw=dict(raw), source=source)


def _check_consistency(raw: dict[str, Any], where: str) -> None:
    layers = int(raw["num_hidden_layers"])
    if len(raw["layer_types"]) < layers:
        raise CheckpointError(
            f"{where}: layer_types has {len(raw['layer_types'])} entries but num_hidden_layers is {layers}."
        )
    unknown = sorted(set(raw["layer_types"]) - {"sliding_attention", "full_attention"})
    if unknown:
        raise CheckpointError(f"{where}: layer_types holds unknown value(s) {unknown}.")
    expected_in = 3 * int(raw["audio_acoustic_hidden_dim"])
    if int(raw["in_channels"]) != expected_in:
        raise CheckpointError(
            f"{where}: in_channels is {raw['in_channels']} but must be 3 x audio_acoustic_hidden_dim "
            f"= {expected_in} (noisy latent + source latent + chunk mask)."
        )
    if int(raw["num_attention_heads"]) % int(raw["num_key_value_heads"]):
        raise CheckpointError(f"{where}: num_attention_heads must be a multiple of num_key_value_heads.")


def read_model_config(folder: Path) -> AceStepModelConfig:
    """Read and validate `<folder>/config.json`."""
    path = Path(folder) / "config.json"
    raw = read_json_object(path, CheckpointError,
                           f"{path} does not exist: {folder} is not an ACE-Step checkpoint folder.")
    return parse_model_config(raw, source=path)


# diffusers component config -> official field names (encoder widths get the `encoder_` prefix).
_FROM_DIFFUSERS_CONDITION_ENCODER = {
    "hidden_size": "encoder_hidden_size",
    "intermediate_size": "encoder_intermediate_size",
    "num_attention_heads": "encoder_num_attention_heads",
    "num_key_value_heads": "encoder_num_key_value_heads",
    "text_hidden_dim": "text_hidden_dim",
    "timbre_hidden_dim": "timbre_hidden_dim",
    "num_lyric_encoder_hidden_layers": "num_lyric_encoder_hidden_layers",
    "num_timbre_encoder_hidden_layers": "num_timbre_encoder_hidden_layers",
}
_FROM_DIFFUSERS_TOKENIZER = (
    "pool_window_size", "fsq_dim", "fsq_input_levels", "fsq_input_num_quantizers",
    "num_attention_pooler_hidden_layers",
)
_FROM_DIFFUSERS_TRANSFORMER = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "in_channels", "audio_acoustic_hidden_dim", "patch_size",
    "rope_theta", "attention_bias", "attention_dropout", "rms_norm_eps", "sliding_window",
    "layer_types", "is_turbo", "model_version",
)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointError,
                            f"{path} does not exist; the diffusers-layout checkpoint is incomplete.")


def config_from_diffusers(folder: Path) -> AceStepModelConfig:
    """Rebuild the official-style config of a diffusers-layout checkpoint folder
    (`transformer/`, `condition_encoder/`, `audio_tokenizer/` configs)."""
    folder = Path(folder)
    transformer = _read_json(folder / "transformer" / "config.json")
    encoder = _read_json(folder / "condition_encoder" / "config.json")
    tokenizer = _read_json(folder / "audio_tokenizer" / "config.json")
    expected = {"transformer": "AceStepTransformer1DModel", "condition_encoder": "AceStepConditionEncoder",
                "audio_tokenizer": "AceStepAudioTokenizer"}
    for name, cfg in (("transformer", transformer), ("condition_encoder", encoder), ("audio_tokenizer", tokenizer)):
        if cfg.get("_class_name") != expected[name]:
            raise CheckpointError(
                f"{folder / name / 'config.json'} describes {cfg.get('_class_name')!r}, expected "
                f"{expected[name]!r}: this is not an ACE-Step 1.5 pipeline folder."
            )
    raw: dict[str, Any] = {"model_type": ACESTEP_MODEL_TYPE}
    raw.update({k: transformer[k] for k in _FROM_DIFFUSERS_TRANSFORMER if k in transformer})
    raw.update({new: encoder[old] for old, new in _FROM_DIFFUSERS_CONDITION_ENCODER.items() if old in encoder})
    raw.update({k: tokenizer[k] for k in _FROM_DIFFUSERS_TOKENIZER if k in tokenizer})
    return parse_model_config(raw, source=folder / "transformer" / "config.json")


def read_dit_config(folder: Path) -> AceStepModelConfig:
    """The config of a DiT folder in either layout (official `config.json`, or diffusers)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return config_from_diffusers(folder)
    return read_model_config(folder)
