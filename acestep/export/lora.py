"""Apply saved adapters to a loaded diffusers ACE-Step transformer, whatever their format.

`load_adapter(transformer, path)` recognises:
- a PEFT folder as the official trainer (and this one) writes it: `adapter_config.json` +
  `adapter_model.safetensors`, keys `base_model.model.layers.N.self_attn.q_proj.lora_A.weight`
  (also with PEFT's `.default.` infix), LoRA or DoRA;
- a ComfyUI single file: `...lora_down.weight` / `...lora_up.weight` with a per-module `.alpha`
  (prefix `base_model.model.` or `diffusion_model.decoder.`);
- a diffusers file: `transformer.`-prefixed keys with the LoRA config in its metadata;
- LyCORIS LoKr weights (`lycoris_<module path>` keys), as a file or in a folder.

Unlike diffusers' own LoRA mixin, the scale `lora_alpha / r` is always honoured (the mixin ignores
`adapter_config.json` and applies 1.0), per module when ranks or alphas differ.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from acestep.errors import AceStepError
from acestep.files import read_json_object
from acestep.models.convert import rename_module_path_to_diffusers
from acestep.training.run_layout import PEFT_CONFIG, PEFT_WEIGHTS

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
_PREFIXES = ("base_model.model.", "diffusion_model.decoder.", "transformer.", "decoder.")
_ADAPTER_NAME_INFIX = re.compile(r"\.default(?=\.|$)")
_SUFFIXES = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "lora_A.weight": "lora_A.weight",
             "lora_B.weight": "lora_B.weight", "lora_magnitude_vector": "lora_magnitude_vector",
             "lora_magnitude_vector.weight": "lora_magnitude_vector", "dora_scale": "lora_magnitude_vector",
             "alpha": "alpha"}


class AdapterError(AceStepError):
    """An adapter file is missing, malformed, or does not fit the model."""


@dataclass
class LoraWeights:
    """A LoRA/DoRA adapter in diffusers module naming: per module its tensors
    (`lora_A.weight` [r, in], `lora_B.weight` [out, r], DoRA `lora_magnitude_vector` [out]) and alpha."""

    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)
    use_dora: bool = False

    def rank(self, module: str) -> int:
        return int(self.modules[module]["lora_A.weight"].shape[0])


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a file; `AdapterError` naming it when it cannot be read."""
    return _reading(path, lambda: (load_file(path), read_safetensors_header(path)))


def read_safetensors_header(path: Path) -> dict[str, str]:
    """The header metadata of a file, without its tensors; `AdapterError` naming it when it cannot be read."""

    def header():
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}

    return _reading(path, header)


def _reading(path: Path, read):
    try:
        return read()
    except FileNotFoundError as exc:
        raise AdapterError(f"{path} does not exist; the adapter is incomplete.") from exc
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path} is damaged or not a safetensors file ({exc}).") from exc


def split_lora_key(key: str) -> tuple[str, str]:
    """`base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight` ->
    (`layers.0.self_attn.to_q`, `lora_A.weight`); ComfyUI's down/up/alpha/dora_scale likewise.
    Raises KeyError for a key that is not a LoRA tensor."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    key = _ADAPTER_NAME_INFIX.sub("", key)
    for suffix, name in _SUFFIXES.items():
        if key.endswith("." + suffix):
            return rename_module_path_to_diffusers(key[: -len(suffix) - 1]), name
    raise KeyError(key)


def lora_weights_from_state(state: dict[str, torch.Tensor], source: Path, default_alpha: float | None = None,
                            alphas: dict[str, float] | None = None, use_dora: bool = False) -> LoraWeights:
    """Group flat LoRA tensors by module. The alpha of a module comes from its `.alpha` tensor,
    else `alphas`, else `default_alpha`, else its rank (scale 1.0, what ComfyUI applies)."""
    weights = LoraWeights(use_dora=use_dora)
    file_alphas: dict[str, float] = {}
    for key, tensor in state.items():
        try:
            module, suffix = split_lora_key(key)
        except KeyError:
            raise AdapterError(f"{source}: key {key!r} is not a LoRA weight (expected '...lora_A.weight', "
                               "'...lora_down.weight' or '....alpha').") from None
        if suffix == "alpha":
            file_alphas[module] = float(tensor.float().item())
            continue
        weights.modules.setdefault(module, {})[suffix] = tensor
        weights.use_dora = weights.use_dora or suffix == "lora_magnitude_vector"
    for module, tensors in weights.modules.items():
        if "lora_A.weight" not in tensors or "lora_B.weight" not in tensors:
            raise AdapterError(f"{source}: module {module} lacks its lora_A/lora_B (down/up) pair.")
        alpha = file_alphas.get(module, (alphas or {}).get(module, default_alpha))
        weights.alphas[module] = float(alpha) if alpha is not None else float(weights.rank(module))
    if not weights.modules:
        raise AdapterError(f"{source} holds no LoRA tensor.")
    return weights


def _pattern(module: str) -> str:
    """A PEFT rank/alpha pattern that matches exactly this module path."""
    return "^" + re.escape(module) + "$"


def apply_lora(transformer: nn.Module, weights: LoraWeights, source: Path, adapter_name: str = "default") -> nn.Module:
    """Inject `weights` into `transformer` with PEFT (rank and alpha per module) and load them."""
    from peft import LoraConfig, set_peft_model_state_dict

    present = {name for name, _ in transformer.named_modules()}
    unknown = sorted(m for m in weights.modules if m not in present)
    if unknown:
        raise AdapterError(f"{source} adapts module(s) the model does not have: {unknown[:6]}. The adapter was "
                           "trained for another model.")
    ranks = {m: weights.rank(m) for m in weights.modules}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(weights.alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=sorted(weights.modules), use_dora=weights.use_dora,
        rank_pattern={_pattern(m): r for m, r in ranks.items() if r != rank},
        alpha_pattern={_pattern(m): a for m, a in weights.alphas.items() if a != alpha},
    )
    was_training = transformer.training
    transformer.add_adapter(config, adapter_name=adapter_name)
    transformer.train(was_training)  # new dropout layers start in train mode; keep the model's mode
    state = {f"{m}.{suffix}": t for m, tensors in weights.modules.items() for suffix, t in tensors.items()}
    try:
        result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    except RuntimeError as exc:  # size mismatch
        raise AdapterError(f"{source} does not fit the model: {exc}") from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k and f".{adapter_name}." in k]
    if unexpected or missing:
        raise AdapterError(f"{source} did not load cleanly: unexpected {unexpected[:6]}, missing {missing[:6]}.")
    return transformer


def _read_peft_folder(folder: Path) -> LoraWeights:
    config_path = folder / PEFT_CONFIG
    config = read_json_object(config_path, AdapterError,
                              f"{folder} has no {PEFT_CONFIG}: it is not a PEFT adapter folder.")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{config_path} describes a {config.get('peft_type')!r} adapter; only PEFT LoRA/DoRA "
                           "folders load here.")
    for name in ("r", "lora_alpha"):
        if not _is_positive_number(config.get(name)):
            raise AdapterError(f"{config_path}: field {name!r} must be a positive number, found {config.get(name)!r}.")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{config_path}: bias {config['bias']!r} is not supported (ACE-Step adapters use 'none').")
    if config.get("use_rslora"):
        raise AdapterError(f"{config_path}: rsLoRA scaling is not supported; export the adapter without it.")
    state, _ = read_safetensors(folder / PEFT_WEIGHTS)
    weights = lora_weights_from_state(state, folder / PEFT_WEIGHTS, use_dora=bool(config.get("use_dora")))
    patterns = _alpha_patterns(config.get("alpha_pattern") or {}, config_path)  # ranks come from the tensors
    for module in weights.modules:
        weights.alphas[module] = _peft_alpha(module, float(config["lora_alpha"]), patterns)
    return weights


def _is_positive_number(value) -> bool:
    """A finite JSON number above 0 (not a boolean, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _alpha_patterns(patterns, config_path: Path) -> list[tuple[re.Pattern, float]]:
    """`alpha_pattern` of a PEFT config as (compiled pattern, alpha), in the file's order."""
    if not isinstance(patterns, dict):
        raise AdapterError(f"{config_path}: alpha_pattern must be an object of module pattern -> alpha, "
                           f"found {patterns!r}.")
    compiled = []
    for pattern, value in patterns.items():
        if not _is_positive_number(value):
            raise AdapterError(f"{config_path}: alpha_pattern[{pattern!r}] must be a positive number, found {value!r}.")
        try:
            compiled.append((re.compile(rf"(.*\.)?({rename_module_path_to_diffusers(pattern)})$"), float(value)))
        except re.error as exc:
            raise AdapterError(f"{config_path}: alpha_pattern key {pattern!r} is not a valid pattern ({exc}).") from exc
    return compiled


def _peft_alpha(module: str, default: float, patterns: list[tuple[re.Pattern, float]]) -> float:
    """PEFT's rule: the first pattern matching the end of the module path (at a dot) wins."""
    for pattern, value in patterns:
        if pattern.match(module):
            return value
    return default


def _read_diffusers_metadata(metadata: dict[str, str], source: Path) -> tuple[float | None, bool]:
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None, False
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise AdapterError(f"{source}: its {DIFFUSERS_METADATA_KEY} metadata is not JSON ({exc}).") from exc
    alpha = config.get("transformer.lora_alpha", config.get("lora_alpha"))
    return (float(alpha) if alpha is not None else None), bool(config.get("transformer.use_dora", False))


def _is_lycoris(keys) -> bool:
    return any(key.startswith("lycoris_") for key in keys)


def is_lokr_adapter(path: str | Path) -> bool:
    """Whether `load_adapter` would read LyCORIS (LoKr) weights at `path` (a folder or a file),
    from the tensor names alone; False for what is not a readable adapter (load_adapter says why)."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if (path / PEFT_CONFIG).is_file() or len(candidates) != 1:
            return False
        path = candidates[0]
    try:
        with safe_open(path, framework="pt") as handle:
            return _is_lycoris(handle.keys())
    except (OSError, SafetensorError):
        return False


def load_adapter(transformer: nn.Module, path: str | Path, adapter_name: str = "default") -> nn.Module:
    """Apply the adapter at `path` (any format above, a folder or a file) to `transformer` in place
    and return it. Raises `AdapterError` naming the file when it is not an adapter, does not fit the
    model, or is damaged."""
    path = Path(path)
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file():
            return apply_lora(transformer, _read_peft_folder(path), path / PEFT_WEIGHTS, adapter_name)
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise AdapterError(f"{path} has no {PEFT_CONFIG}: it is not a PEFT adapter folder, and it holds "
                               f"{len(candidates)} .safetensors files, not one adapter file.")
        path = candidates[0]
    state, metadata = read_safetensors(path)
    if _is_lycoris(state):
        from acestep.export.lokr import apply_lokr

        return apply_lokr(transformer, state, path)
    if any(key.startswith("base_model.model.") and ".lora_A" in key for key in state) and not any(
            key.endswith(".alpha") for key in state):
        raise AdapterError(f"{path} is a PEFT weights file without its {PEFT_CONFIG}: put both in one folder "
                           "and give the folder, so the adapter's alpha is known.")
    alpha, use_dora = _read_diffusers_metadata(metadata, path)
    return apply_lora(transformer, lora_weights_from_state(state, path, default_alpha=alpha, use_dora=use_dora),
                      path, adapter_name)
