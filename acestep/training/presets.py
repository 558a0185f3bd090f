"""Presets: named partial training configs, built in (one per GPU memory tier, plus quick_test,
recommended and high_quality) or saved by the user.

A preset file is JSON: `{"name", "description", "min_vram_gib", "notes", "config"}`. `config` is
a partial config with the nesting of the training TOML (and a "version", migrated like a
config); `notes` says why each value was chosen, by field path; `min_vram_gib` is the smallest
card (GiB of total memory) it is meant for. Built-in presets live in `acestep/training/presets/`
(package data); user presets in `$ACESTEP_PRESETS_DIR`, else `presets/` in the project folder.
Every problem with a preset raises ConfigError naming the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acestep.errors import ConfigError
from acestep.files import read_json_object, write_atomically
from acestep.training.config import TrainingConfig, apply_preset, config_to_dict

PRESETS_DIR_ENV = "ACESTEP_PRESETS_DIR"
BUILTIN_DIR = Path(__file__).resolve().parent / "presets"
# Tiers from the largest card down, then the recipes; list_presets shows built-ins in this order.
BUILTIN_ORDER = ("vram_24gb_plus", "vram_16gb", "vram_12gb", "vram_8gb", "recommended", "high_quality", "quick_test")
GIB = 1024 ** 3
# Auto-selection by total memory. Cards report a little less than their label (a 24 GB card
# 23.6-24.0 GiB, a 16 GB card about 15.6, an 8 GB card about 7.6), hence the lower bounds.
TIERS = ((23.0, "vram_24gb_plus"), (15.0, "vram_16gb"), (9.5, "vram_12gb"), (7.0, "vram_8gb"))
NO_GPU_PRESET = "quick_test"
# Where a run's data and model are: never part of a preset saved from a whole config.
LOCATION_FIELDS = ("model.checkpoint", "model.checkpoints_dir", "data.tensors_dir", "run.output_dir", "run.name")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = {"name", "description", "min_vram_gib", "notes", "config"}


@dataclass(frozen=True)
class Preset:
    """One preset file: `config` is the partial config it applies, `notes` why (by field path)."""

    name: str
    description: str
    config: dict[str, Any]
    min_vram_gib: float | None = None
    notes: dict[str, str] = field(default_factory=dict)
    builtin: bool = True
    path: Path | None = None


def user_presets_dir() -> Path:
    """`$ACESTEP_PRESETS_DIR` when set, else `presets/` in the project folder."""
    configured = os.environ.get(PRESETS_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    from acestep.environment import project_root

    return project_root() / "presets"


def list_presets(errors: list[str] | None = None) -> list[Preset]:
    """The built-in presets (tiers from the largest card down, then the recipes), then the user's
    presets by name. A malformed file raises ConfigError naming it, or, when `errors` is a list,
    is left out and its message appended there (so a UI can list the good ones)."""
    presets = [_read(BUILTIN_DIR / f"{name}.json", builtin=True) for name in BUILTIN_ORDER]
    folder = user_presets_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                presets.append(_read(path, builtin=False))
            except ConfigError as error:
                if errors is None:
                    raise
                errors.append(str(error))
    return presets


def load_preset(name: str) -> Preset:
    """The built-in or user preset called `name`. Raises ConfigError for an unknown name (listing
    the known ones) or a malformed file."""
    if name in BUILTIN_ORDER:
        return _read(BUILTIN_DIR / f"{name}.json", builtin=True)
    if isinstance(name, str) and _NAME.match(name):
        path = user_presets_dir() / f"{name}.json"
        if path.is_file():
            return _read(path, builtin=False)
    known = [p.name for p in list_presets(errors=[])]
    raise ConfigError(f"unknown preset {name!r}; the presets are: {', '.join(known)}")


def apply_named_preset(config: TrainingConfig, name: str) -> TrainingConfig:
    """A new config: preset `name` over `config` (fields the preset leaves out keep their values).
    Raises ConfigError naming the preset file for a preset that does not fit the config's rules."""
    preset = load_preset(name)
    return apply_preset(config, preset.config, f"preset {preset.name} ({preset.path})", complete=False)


def recommend_preset(total_vram_bytes: int | None) -> str:
    """The preset for a GPU with this much TOTAL memory (None: no GPU, `quick_test`). Tiers:
    23+ GiB vram_24gb_plus, 15+ vram_16gb, 9.5+ vram_12gb (10-12 GB cards), else vram_8gb (below
    7 GiB with a warning: see `recommendation_message`)."""
    if total_vram_bytes is None:
        return NO_GPU_PRESET
    total = total_vram_bytes / GIB
    return next((name for floor, name in TIERS if total >= floor), "vram_8gb")


def recommendation_message(total_vram_bytes: int | None) -> str:
    """One line: the recommended preset and why, with a warning for cards below 7 GiB."""
    name = recommend_preset(total_vram_bytes)
    if total_vram_bytes is None:
        return (f"{name}: no CUDA GPU, so only a short test run is practical "
                "(training the 2B model on a CPU takes minutes per step)")
    total = total_vram_bytes / GIB
    if total < TIERS[-1][0]:
        return (f"{name}, with a warning: this GPU has {total:.1f} GiB in all, less than the 8 GB the smallest "
                "preset is made for; the run may not fit (the pre-training check will say)")
    return f"{name} (the tier for a GPU with {total:.1f} GiB in all)"


def save_user_preset(name: str, config_or_partial: TrainingConfig | dict[str, Any], description: str, *,
                     min_vram_gib: float | None = None, notes: dict[str, str] | None = None,
                     overwrite: bool = False) -> Path:
    """Write a user preset `<user presets dir>/<name>.json` atomically and return its path.

    A `TrainingConfig` is saved whole except where its data and model are (`LOCATION_FIELDS`);
    a dict is saved as the partial config it is. Raises ConfigError for a name that is not a
    plain file name, a built-in name, an existing preset without `overwrite`, or settings that do
    not validate.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"preset name {name!r}: use letters, digits, '_', '-' and '.' (at most 64, "
                          "starting with a letter or digit)")
    if name in BUILTIN_ORDER:
        raise ConfigError(f"preset name {name!r} is a built-in preset; choose another name")
    if isinstance(config_or_partial, TrainingConfig):
        partial = config_to_dict(config_or_partial)
        for path in LOCATION_FIELDS:
            section, key = path.split(".")
            partial[section].pop(key, None)
    elif isinstance(config_or_partial, dict):
        partial = json.loads(json.dumps(config_or_partial))  # a deep copy that must also be JSON
    else:
        raise ConfigError(f"preset {name!r}: expected a TrainingConfig or a dict of sections, found "
                          f"{type(config_or_partial).__name__}")
    target = user_presets_dir() / f"{name}.json"
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: a preset named {name!r} exists already; pass overwrite=True to replace it")
    partial.setdefault("version", TrainingConfig().version)
    document = {"name": name, "description": str(description), "min_vram_gib": min_vram_gib,
                "notes": dict(notes or {}), "config": partial}
    _check(document, target, builtin=False)
    write_atomically(target, json.dumps(document, indent=2) + "\n", ConfigError, "preset file")
    return target


def _read(path: Path, builtin: bool) -> Preset:
    data = read_json_object(path, ConfigError, f"{path}: preset file does not exist")
    return _check(data, path, builtin)


def _check(data: dict[str, Any], path: Path, builtin: bool) -> Preset:
    """The Preset in `data`, or ConfigError naming `path` and what is wrong."""
    unknown = sorted(set(data) - _KEYS)
    missing = sorted({"name", "description", "config"} - set(data))
    if unknown or missing:
        raise ConfigError(f"{path}: a preset holds {', '.join(sorted(_KEYS))}; "
                          + (f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"))
    name, description = data["name"], data["description"]
    if name != path.stem:
        raise ConfigError(f"{path}: the preset's name {name!r} must be the file name {path.stem!r}")
    if not builtin and name in BUILTIN_ORDER:
        raise ConfigError(f"{path}: a user preset cannot take the built-in name {name!r}; rename the file")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description must be text, found {description!r}")
    vram = data.get("min_vram_gib")
    if vram is not None and (isinstance(vram, bool) or not isinstance(vram, (int, float)) or vram <= 0):
        raise ConfigError(f"{path}: min_vram_gib must be a number of GiB above 0 (or null), found {vram!r}")
    notes = data.get("notes") or {}
    if not isinstance(notes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in notes.items()):
        raise ConfigError(f"{path}: notes must map field paths (\"optimizer.lr\") to text")
    config = data["config"]
    apply_preset(TrainingConfig(), config, str(path), complete=False)  # raises ConfigError naming the file
    set_paths = {f"{section}.{key}" for section, values in config.items() if isinstance(values, dict)
                 for key in values}
    noted = sorted(set(notes) - set_paths)
    if noted:
        raise ConfigError(f"{path}: notes on field(s) the preset does not set: {', '.join(noted)}")
    return Preset(name, description, config, None if vram is None else float(vram), dict(notes), builtin, path)
