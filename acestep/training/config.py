"""The training config: one typed tree holding everything a run needs.

It is loaded from TOML (`load_config`) or built from a dict (`config_from_dict`; the UI builds the
same `TrainingConfig`), changed by `--set section.field=value` (`apply_overrides`) and by presets,
which are partial configs (`apply_preset`), validated with messages that name the field
(`validate`), and written back resolved into the run directory (`save_config`). Files carry a
`version`; older ones are migrated on load (`acestep.training.config_migrations`).

The tree itself, each field's help and allowed values, and the rules between fields are in
`acestep.training.config_schema` (re-exported here); one value's type rules in `config_values`.

Every problem raises `ConfigError`; one about fields lists all of them at once and carries them
as `error.problems`, a list of (field path, message) pairs the UI can attach to its inputs.
TOML has no null: an unset optional field is left out of a file when unset is its default, and
written as the text "none" otherwise (files and `--set` accept "none" or "null" for any optional
field).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import tomli_w

from acestep.errors import ConfigError
from acestep.files import read_text, write_atomically
from acestep.training.config_migrations import MIGRATIONS, migrate
from acestep.training.config_rules import rule_problems
from acestep.training.config_schema import (
    CONFIG_VERSION, FIELD_META, FIELD_TYPES, SECTIONS, AdapterConfig, DataConfig, FieldDoc, ModelConfig,
    ObjectiveConfig, OptimizerConfig, RunConfig, TrainingConfig, describe_fields, parse_devices,
)
from acestep.training.config_values import NONE_WORDS, Invalid, coerce, parse_text, show, suggest

__all__ = [
    "CONFIG_VERSION", "MIGRATIONS", "ModelConfig", "DataConfig", "AdapterConfig", "ObjectiveConfig",
    "OptimizerConfig", "RunConfig", "TrainingConfig", "config_from_dict", "load_config", "apply_overrides",
    "apply_preset", "validate", "config_to_dict", "save_config", "diff_from_defaults", "resolve_paths",
    "parse_devices", "describe_fields", "FieldDoc",
]

# --- public API ----------------------------------------------------------------------------------


def config_from_dict(data: Any, source: str = "config", *, complete: bool = True) -> TrainingConfig:
    """A validated TrainingConfig from nested plain data (decoded TOML or JSON, or the UI's values).

    Runs the migrations first (see `config_migrations`). Missing sections and fields get their
    defaults. Unknown sections and fields, values of the wrong type (ints are accepted for floats;
    numbers in quotes are not) and every rule of `validate` raise one ConfigError, prefixed with
    `source`, listing every problem. `complete=False` skips the required-field checks, for a
    config still being filled in (the UI); one that is trained from must be complete.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a training config must be a table of sections "
                          f"({', '.join(SECTIONS)}), found {show(data)}")
    data = migrate(data, source, CONFIG_VERSION)
    return _build(data, source, complete, [], set())


def load_config(path: str | os.PathLike) -> TrainingConfig:
    """Read, migrate and validate a TOML training config.

    Raises ConfigError naming the file when it is missing, unreadable, not UTF-8, not valid TOML
    (with the line and column) or not a valid config (see `config_from_dict`).
    """
    source = os.path.abspath(path)
    text = read_text(source, ConfigError, "config file", "TOML config file")
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as error:  # TOMLDecodeError ends with "(at line L, column C)"
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    return config_from_dict(data, source)


def apply_overrides(config: TrainingConfig, overrides: list[str]) -> TrainingConfig:
    """A new validated config with `section.field=value` overrides (the CLI's `--set`) applied.

    Each value is parsed by its field's type: bool true/false/yes/no/on/off/1/0; int; float
    ("2e-4"); "none" or "null" for an optional field; a list as "a,b" or a TOML/JSON array
    ("[0.9, 0.95]"); text as it is; run.devices as a number, or text ("auto", "0,1", "\"1\"").
    Raises ConfigError listing every malformed or unknown override (with a suggestion) and every
    problem of the result. `config` is not changed.
    """
    data = config_to_dict(config)
    problems: list[tuple[str, str]] = []
    bad: set[str] = set()
    for override in overrides:
        try:
            path, value = _parse_override(override)
        except Invalid as error:
            problems.append((error.path, f"--set {override}: {error}"))
            bad.add(error.path)
            continue
        section, name = path.split(".")
        if isinstance(data.get(section), dict):  # else a section broken in code, reported by _build
            data[section][name] = value
    return _build(data, "--set overrides", True, problems, bad)


def apply_preset(config: TrainingConfig, preset: Any, source: str = "preset", *,
                 complete: bool = True) -> TrainingConfig:
    """A new validated config: the preset, a partial config of the same nesting, over `config`.

    A preset with a "version" is migrated first. Raises ConfigError (prefixed with `source`)
    for an unknown section or field, a wrong value, or a result that breaks a rule (a preset's
    best_after_epochs past the run's epochs, say); `complete=False` as in `config_from_dict`.
    """
    if not isinstance(preset, dict):
        raise ConfigError(f"{source}: a preset must be a table of sections, found {show(preset)}")
    preset = migrate(preset, source, CONFIG_VERSION)
    merged = config_to_dict(config)
    for key, value in preset.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value  # unknown keys and non-tables are reported by _build
    return _build(merged, source, complete, [], set())


def validate(config: TrainingConfig, *, complete: bool = True) -> None:
    """Check every field's type, range and choice, and the rules between fields.

    Raises one ConfigError listing every problem, each naming the field path, the value found
    and what is allowed. Not checked here (it needs the dataset and the hardware): that
    warmup_steps is below the run's total steps, and that the devices exist.
    """
    if not isinstance(config, TrainingConfig):
        raise ConfigError(f"config: expected a TrainingConfig, found {type(config).__name__}")
    problems: list[tuple[str, str]] = []
    bad: set[str] = set()
    if isinstance(config.version, bool) or config.version != CONFIG_VERSION:
        problems.append(("version", f"version must be {CONFIG_VERSION}, found {show(config.version)}"))
    for section, cls in SECTIONS.items():
        values = getattr(config, section)
        if not isinstance(values, cls):
            problems.append((section, f"{section} must be a {cls.__name__}, found {show(values)}"))
            bad.update(path for path in FIELD_TYPES if path.startswith(f"{section}."))
            continue
        for f in fields(cls):
            path = f"{section}.{f.name}"
            try:
                coerce(getattr(values, f.name), FIELD_TYPES[path], path, text_none=False)
            except Invalid as error:
                problems.append((path, str(error)))
                bad.add(path)
    _raise_problems("config", problems + rule_problems(config, bad, complete))


def config_to_dict(config: TrainingConfig) -> dict[str, Any]:
    """Every field as plain nested data ({"version": 1, "model": {...}, ...}); unset is None."""
    if not isinstance(config, TrainingConfig):
        raise ConfigError(f"config: expected a TrainingConfig, found {type(config).__name__}")
    return dataclasses.asdict(config)


def config_to_toml_data(config: TrainingConfig) -> dict[str, Any]:
    """`config` as TOML data: every field, unset optional ones left out when unset is their
    default, else written as "none" (TOML has no null)."""
    defaults = config_to_dict(TrainingConfig())
    data = config_to_dict(config)
    for section in SECTIONS:
        for name, value in list(data[section].items()):
            if value is None:
                if defaults[section][name] is None:
                    del data[section][name]
                else:
                    data[section][name] = NONE_WORDS[0]
    return data


def save_config(config: TrainingConfig, path: str | os.PathLike) -> Path:
    """Validate `config` and write it as TOML (every field, with the version); return the path.

    The file is replaced atomically (temp file + os.replace) and loads back equal. Unset optional
    fields are left out when unset is their default, else written as "none". Raises ConfigError
    for an invalid config or a write that fails (the old file is then left as it was).
    """
    validate(config)
    data = config_to_toml_data(config)
    text = ("# Training config written by acestep-trainer: every setting of the run, resolved.\n"
            "# Settings left out are unset. Load it with `acestep-trainer train --config <file>`.\n"
            + tomli_w.dumps(data))
    target = Path(os.path.abspath(path))
    write_atomically(target, text, ConfigError, "config file")
    return target


def diff_from_defaults(config: TrainingConfig) -> dict[str, dict[str, Any]]:
    """The fields that differ from the defaults, nested by section (a partial config: a preset)."""
    defaults = config_to_dict(TrainingConfig())
    values = config_to_dict(config)
    diff: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        changed = {name: value for name, value in values[section].items()
                   if value != defaults[section][name]}
        if changed:
            diff[section] = changed
    return diff


def resolve_paths(config: TrainingConfig, base: str | os.PathLike) -> TrainingConfig:
    """A copy with the folder fields (data.tensors_dir, run.output_dir, model.checkpoints_dir)
    made absolute: "~" expanded, relative ones taken from `base`. Empty and unset stay as they are.
    model.checkpoint too when it names an existing path from `base` (as `resolve_model_path` takes
    it first), so a run's config and adapters name the model they trained on from any folder;
    otherwise it is a folder name in the checkpoints folder or a Hugging Face id, left alone."""
    resolved = copy.deepcopy(config)
    for path, meta in FIELD_META.items():
        section, name = path.split(".")
        value = getattr(getattr(resolved, section), name)
        if meta.get("path") and isinstance(value, str) and value:
            setattr(getattr(resolved, section), name, _absolute(base, value))
    checkpoint = resolved.model.checkpoint
    if checkpoint and os.path.exists(_absolute(base, checkpoint)):
        resolved.model.checkpoint = _absolute(base, checkpoint)
    return resolved


def _absolute(base: str | os.PathLike, value: str) -> str:
    return os.path.abspath(os.path.join(os.fspath(base), os.path.expanduser(value)))


# --- building a config from plain data -----------------------------------------------------------


def _build(data: dict[Any, Any], source: str, complete: bool,
           problems: list[tuple[str, str]], bad: set[str]) -> TrainingConfig:
    """The config in migrated `data`, or one ConfigError with every problem (those of earlier
    steps, `problems`, first). A field with a bad value keeps its default and is left out of
    the rules (`bad`), so one mistake is reported once."""
    problems, bad = list(problems), set(bad)
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "version":
            continue
        if key not in SECTIONS:
            problems.append((_key(key), _unknown_top_level(key, value)))
        elif not isinstance(value, dict):
            problems.append((key, f"{key} must be a section (a [{key}] table), found {show(value)}"))
            bad.update(path for path in FIELD_TYPES if path.startswith(f"{key}."))
        else:
            sections[key] = _build_section(key, value, problems, bad)
    config = TrainingConfig(version=CONFIG_VERSION, **sections)
    _raise_problems(source, problems + rule_problems(config, bad, complete))
    return config


def _build_section(section: str, raw: dict[Any, Any], problems: list[tuple[str, str]], bad: set[str]) -> Any:
    values = {}
    for name, value in raw.items():
        path = f"{section}.{_key(name)}"
        if path not in FIELD_TYPES:
            problems.append((path, _unknown_field(section, _key(name))))
            continue
        try:
            values[name] = coerce(value, FIELD_TYPES[path], path, text_none=True)
        except Invalid as error:
            problems.append((path, str(error)))
            bad.add(path)
    return SECTIONS[section](**values)


def _parse_override(override: Any) -> tuple[str, Any]:
    if not isinstance(override, str) or "=" not in override:
        raise Invalid("", "expected section.field=value, such as optimizer.lr=2e-4")
    key, _, text = override.partition("=")
    key = key.strip()
    if key not in FIELD_TYPES:
        section, dot, name = key.partition(".")
        if not dot or "." in name:
            guess = _likely_field(key) or suggest(key, FIELD_TYPES)
            hint = f"; did you mean {guess}?" if guess else ""
            raise Invalid("", f"{key!r} is not a setting: expected section.field=value{hint}")
        if section not in SECTIONS:
            raise Invalid("", _unknown_top_level(section, {}))
        raise Invalid(key, _unknown_field(section, name))
    return key, parse_text(text, FIELD_TYPES[key], key)


def _key(key: Any) -> str:
    """A dict key as a name; keys of other types (from Python callers) never match a field."""
    return key if isinstance(key, str) else show(key)


def _unknown_top_level(key: Any, value: Any) -> str:
    name = _key(key)
    if isinstance(value, dict):
        guess = suggest(name, SECTIONS)
        hint = f"did you mean [{guess}]?" if guess else f"the sections are {', '.join(SECTIONS)}"
        return f"unknown section [{name}]; {hint}"
    guess = _likely_field(name)
    hint = f"did you mean {guess} (under [{guess.split('.')[0]}])?" if guess else \
        f"settings go under a section: {', '.join(SECTIONS)}"
    return f"unknown setting {name!r} outside any section; {hint}"


def _unknown_field(section: str, name: str) -> str:
    guess = _likely_field(name, section)
    if guess:
        return f"unknown field {section}.{name}; did you mean {guess}?"
    names = ", ".join(f.name for f in fields(SECTIONS[section]))
    return f"unknown field {section}.{name}; [{section}] has {names}"


def _likely_field(name: str, section: str | None = None) -> str | None:
    """The field path a misplaced or mistyped `name` most likely meant: the field of that name in
    another section, the field other trainers call so, a near spelling in `section`, then anywhere."""
    leaf = {path: path.split(".")[1] for path in FIELD_TYPES}
    exact = next((path for path, field_name in leaf.items() if field_name == name), None)
    if exact or name.casefold() in _OTHER_NAMES:
        return exact or _OTHER_NAMES[name.casefold()]
    if section:
        guess = suggest(name, [f.name for f in fields(SECTIONS[section])])
        if guess:
            return f"{section}.{guess}"
    guess = suggest(name, leaf.values())
    return next(path for path, field_name in leaf.items() if field_name == guess) if guess else None


# Names other trainers (diffusers scripts, PEFT, the official and peer ACE-Step trainers) use.
_OTHER_NAMES = {
    "learning_rate": "optimizer.lr", "lr_scheduler": "optimizer.scheduler", "optimizer": "optimizer.name",
    "lr_warmup_steps": "optimizer.warmup_steps", "gradient_accumulation_steps": "optimizer.gradient_accumulation",
    "max_grad_norm": "optimizer.grad_clip", "r": "adapter.rank", "lora_rank": "adapter.rank",
    "lora_alpha": "adapter.alpha", "lora_dropout": "adapter.dropout", "target_modules": "adapter.modules",
    "train_batch_size": "data.batch_size", "num_train_epochs": "run.epochs", "max_train_steps": "run.max_steps",
    "mixed_precision": "run.precision", "cfg_ratio": "objective.cfg_dropout",
}


def _raise_problems(source: str, problems: list[tuple[str, str]]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        message = f"{source}: {problems[0][1]}"
    else:
        lines = "\n".join(f"  - {text}" for _, text in problems)
        message = f"{source}: {len(problems)} problems in the training config:\n{lines}"
    error = ConfigError(message)
    error.problems = problems
    raise error


# --- small helpers -------------------------------------------------------------------------------


