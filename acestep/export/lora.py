"""Apply saved LoRA adapters to a loaded diffusers ACE-Step transformer.

Supported here: the PEFT directory the official ACE-Step trainer writes and official inference
loads (`adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.layers.N.{self_attn,cross_attn}.{q,k,v,o}_proj.lora_{A,B}.weight`, MLP
projections likewise), including saves that keep PEFT's `.default.` adapter-name infix.

Unlike diffusers' own LoRA mixin, the scale `lora_alpha / r` (and `rank_pattern` /
`alpha_pattern`) is honoured: the mixin ignores `adapter_config.json` and applies scale 1.0.
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from acestep.errors import AceStepError
from acestep.files import read_json_object
from acestep.models.convert import rename_module_path_to_diffusers

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_ADAPTER_NAME_INFIX = re.compile(r"\.default(?=\.|$)")


class AdapterError(AceStepError):
    """An adapter file is missing, malformed, or does not fit the model."""


def _read_peft_config(folder: Path) -> dict:
    path = folder / PEFT_CONFIG_NAME
    config = read_json_object(path, AdapterError,
                              f"{folder} has no {PEFT_CONFIG_NAME}: it is not a PEFT adapter folder.")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path} describes a {config.get('peft_type')!r} adapter; "
                           "only PEFT LoRA/DoRA folders load here.")
    for field in ("r", "lora_alpha"):
        if not isinstance(config.get(field), (int, float)) or config[field] <= 0:
            raise AdapterError(f"{path}: field {field!r} must be a positive number, found {config.get(field)!r}.")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{path}: bias {config['bias']!r} is not supported (ACE-Step adapters use bias 'none').")
    return config


def _module_and_suffix(key: str) -> tuple[str, str]:
    """`base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight`
    -> (`layers.0.self_attn.to_q`, `lora_A.weight`)."""
    if key.startswith(_PEFT_PREFIX):
        key = key[len(_PEFT_PREFIX):]
    key = _ADAPTER_NAME_INFIX.sub("", key)
    module, sep, suffix = key.partition(".lora_")
    if not sep:
        raise KeyError(key)
    return rename_module_path_to_diffusers(module), "lora_" + suffix


def _rename_patterns(patterns: dict | None) -> dict:
    return {rename_module_path_to_diffusers(k): v for k, v in (patterns or {}).items()}


def load_adapter(transformer: nn.Module, path: str | Path, adapter_name: str = "default") -> nn.Module:
    """Apply the PEFT LoRA/DoRA adapter in folder `path` to `transformer` (in place) and return it.

    The adapter's modules are taken from its weights (every module that has `lora_A`/`lora_B`),
    its scale from `lora_alpha / r` and the per-module patterns. Raises `AdapterError` naming the
    file when the folder is not an adapter, a key matches no module, or a shape does not fit.
    """
    from peft import LoraConfig, set_peft_model_state_dict

    folder = Path(path)
    config = _read_peft_config(folder)
    weights_path = folder / PEFT_WEIGHTS_NAME
    try:
        raw = load_file(weights_path)
    except FileNotFoundError as exc:
        raise AdapterError(f"{weights_path} does not exist; the adapter folder is incomplete.") from exc
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{weights_path} is damaged ({exc}).") from exc
    state: dict = {}
    for key, tensor in raw.items():
        try:
            module, suffix = _module_and_suffix(key)
        except KeyError:
            raise AdapterError(
                f"{weights_path}: key {key!r} is not a LoRA weight (expected '...lora_A.weight')."
            ) from None
        state[f"{module}.{suffix}"] = tensor
    targets = sorted({key.partition(".lora_")[0] for key in state})
    present = {name for name, _ in transformer.named_modules()}
    unknown = [t for t in targets if t not in present]
    if unknown:
        raise AdapterError(
            f"{weights_path} adapts module(s) the model does not have: {unknown[:6]}. The adapter was "
            "trained for another model."
        )
    lora_config = LoraConfig(
        r=int(config["r"]),
        lora_alpha=config["lora_alpha"],
        lora_dropout=float(config.get("lora_dropout") or 0.0),
        target_modules=targets,
        use_dora=bool(config.get("use_dora", False)),
        use_rslora=bool(config.get("use_rslora", False)),
        rank_pattern=_rename_patterns(config.get("rank_pattern")),
        alpha_pattern=_rename_patterns(config.get("alpha_pattern")),
    )
    was_training = transformer.training
    transformer.add_adapter(lora_config, adapter_name=adapter_name)
    transformer.train(was_training)  # new dropout layers start in train mode; keep the model's mode
    try:
        result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    except RuntimeError as exc:  # size mismatch
        raise AdapterError(f"{weights_path} does not fit the model: {exc}") from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k and f".{adapter_name}." in k]
    if unexpected or missing:
        raise AdapterError(
            f"{weights_path} did not load cleanly: unexpected {unexpected[:6]}, missing {missing[:6]}."
        )
    return transformer
