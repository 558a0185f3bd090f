"""Profiles: the whole configuration of a training — the dataset settings and the training config —
saved as one TOML file in the workspace's `profiles/` folder and loaded back into the Train tab.

    save_profile(workspace.profiles / "my-band.toml", config, {"trigger_tag": "mystyle"})
    config, dataset_settings = load_profile(path)     # a run's config.toml loads too

A profile file:

    profile_version = 1
    [dataset]            # the dataset settings (all optional): dataset_path, trigger_tag, tag_position, genre_ratio
    [training]           # a training config, as `acestep-trainer train --config` reads it
    [training.adapter] ...

A run's `config.toml` (a training config alone) loads as a profile without dataset settings.
Every problem raises ConfigError naming the file. `build_profile_section` is the Train tab's
save/load section over these functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import gradio as gr
import tomli_w

from acestep.dataset.schema import TAG_POSITIONS
from acestep.errors import ConfigError
from acestep.files import read_text, write_atomically
from acestep.training.config import TrainingConfig, config_from_dict, config_to_toml_data, validate
from acestep.training.config_values import show
from acestep.training.run_folders import run_folders
from acestep.training.run_layout import CONFIG_FILE
from acestep.ui.context import AppContext
from acestep.ui.jobs_panel import friendly
from acestep.ui.dropdowns import read_when_opened, relisted
from acestep.ui.train_form import config_from_values, values_from_config

PROFILE_VERSION = 1
DATASET_DEFAULTS: dict[str, Any] = {"dataset_path": "", "trigger_tag": "", "tag_position": "prepend",
                                    "genre_ratio": 0.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def save_profile(path: str | Path, training_config: TrainingConfig, dataset_settings: dict[str, Any]) -> Path:
    """Write the profile TOML at `path` (replaced atomically) and return it. The training config
    may be incomplete (no tensors folder yet) but must otherwise be valid. Raises ConfigError for
    an invalid config, unknown or malformed dataset settings, or a write that fails."""
    path = Path(path)
    validate(training_config, complete=False)
    dataset = check_dataset_settings(dataset_settings, str(path))
    document = {"profile_version": PROFILE_VERSION, "dataset": dataset,
                "training": config_to_toml_data(training_config)}
    text = ("# ACE-Step trainer profile: dataset settings and the training config.\n"
            "# Load it in the Train tab, or train from its [training] part.\n" + tomli_w.dumps(document))
    write_atomically(path, text, ConfigError, "profile")
    return path


def load_profile(path: str | Path) -> tuple[TrainingConfig, dict[str, Any]]:
    """(the training config, the dataset settings) of a profile file, or of a run's config.toml
    (whose dataset settings are {}). Raises ConfigError naming the file when it is missing, not
    TOML (with the line and column), or holds an unknown key or an invalid value."""
    source = str(Path(path).resolve())
    text = read_text(source, ConfigError, "profile", "TOML profile")
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as error:  # TOMLDecodeError ends with "(at line L, column C)"
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    if not ({"profile_version", "dataset", "training"} & set(data)):  # a training config alone
        return config_from_dict(data, source, complete=False), {}
    unknown = sorted(set(data) - {"profile_version", "dataset", "training"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; a profile holds profile_version, "
                          "[dataset] and [training]")
    version = data.get("profile_version", PROFILE_VERSION)
    if version != PROFILE_VERSION or isinstance(version, bool):
        raise ConfigError(f"{source}: profile_version must be {PROFILE_VERSION}, found {show(version)}")
    training = data.get("training", {})
    config = config_from_dict(training, f"{source} [training]", complete=False)
    return config, check_dataset_settings(data.get("dataset", {}), source)


def check_dataset_settings(settings: Any, source: str) -> dict[str, Any]:
    """The dataset settings with their defaults filled in. Raises ConfigError (prefixed with
    `source`) for a key other than dataset_path, trigger_tag, tag_position, genre_ratio, or a bad value."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{source}: [dataset] must be a table, found {show(settings)}")
    unknown = sorted(set(settings) - set(DATASET_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown dataset setting(s) {', '.join(map(str, unknown))}; "
                          f"the settings are {', '.join(DATASET_DEFAULTS)}")
    merged = {**DATASET_DEFAULTS, **settings}
    for key in ("dataset_path", "trigger_tag"):
        if not isinstance(merged[key], str):
            raise ConfigError(f"{source}: dataset.{key} must be text, found {show(merged[key])}")
    if merged["tag_position"] not in TAG_POSITIONS:
        raise ConfigError(f"{source}: dataset.tag_position must be one of {', '.join(TAG_POSITIONS)}, "
                          f"found {show(merged['tag_position'])}")
    ratio = merged["genre_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"{source}: dataset.genre_ratio must be a number from 0 to 1, found {show(ratio)}")
    merged["genre_ratio"] = float(ratio)
    return merged


def profile_path(profiles_dir: Path, name: str) -> Path:
    """`<profiles_dir>/<name>.toml` for a plain name. Raises ConfigError for a name that is not one."""
    name = str(name).strip().removesuffix(".toml")
    if not _NAME.match(name):
        raise ConfigError(f"profile name {name!r}: use letters, digits, spaces, '_', '-' and '.' "
                          "(at most 64, starting with a letter or digit)")
    return Path(profiles_dir) / f"{name}.toml"


def list_profiles(profiles_dir: Path, runs_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of every profile in `profiles_dir`, then of every run's config.toml in
    `runs_dir` (newest run first), for a dropdown."""
    choices = [(path.stem, str(path)) for path in sorted(Path(profiles_dir).glob("*.toml"))]
    choices += [(f"run: {folder.name}", str(folder / CONFIG_FILE)) for folder in run_folders(runs_dir)]
    return choices


# ---- the Train tab's section ---------------------------------------------------------------------------
DATASET_KEYS = tuple(DATASET_DEFAULTS)  # the order of the dataset inputs


def save_form_profile(ctx: AppContext, name: str, values: list, dataset_values: list) -> Path:
    """Save the form (values in FORM_FIELDS order, which may lack a tensors folder) and the dataset
    inputs (DATASET_KEYS order) as profile `name`. Raises ConfigError or PathRefused."""
    settings = dict(zip(DATASET_KEYS, dataset_values, strict=True))
    settings["genre_ratio"] = 0.0 if settings["genre_ratio"] is None else settings["genre_ratio"]
    if str(settings["dataset_path"]).strip():
        ctx.workspace.check_path(settings["dataset_path"], what="dataset path")
    config = config_from_values(values, complete=False)
    return save_profile(profile_path(ctx.workspace.profiles, name), config, settings)


def load_form_profile(ctx: AppContext, path_text: str) -> tuple[list, list | None]:
    """(the form's values, the dataset inputs' values or None for a run's config.toml) of a
    profile in the app's folders. Raises ConfigError or PathRefused."""
    path = ctx.workspace.check_path(path_text, must_exist=True, what="profile")
    config, settings = load_profile(path)
    return values_from_config(config), [settings[key] for key in DATASET_KEYS] if settings else None


def build_profile_section(ctx: AppContext, form: list) -> list:
    """The profile inputs (dataset settings, a profile dropdown with Load, a name with Save) over
    the form's inputs (FORM_FIELDS order). Returns the dataset inputs."""
    def choices():
        return list_profiles(ctx.workspace.profiles, ctx.workspace.runs)

    defaults = {**DATASET_DEFAULTS, "dataset_path": str(ctx.defaults.get("dataset", ""))}
    with gr.Accordion("Profiles: save or load these settings with the dataset's", open=False,
                      elem_id="train-profiles"):
        with gr.Row():
            dataset = [
                gr.Textbox(defaults["dataset_path"], label="Dataset", info="The dataset JSON (Dataset tab).",
                           elem_id="train-profile-dataset"),
                gr.Textbox(defaults["trigger_tag"], label="Trigger tag", elem_id="train-profile-tag"),
                gr.Dropdown(list(TAG_POSITIONS), value=defaults["tag_position"], label="Tag position",
                            elem_id="train-profile-tag-position"),
                gr.Number(defaults["genre_ratio"], label="Genre ratio", info="From 0 to 1.",
                          elem_id="train-profile-genre-ratio"),
            ]
        with gr.Row():
            chosen = gr.Dropdown(choices(), label="Profile or run config", elem_id="train-profile")
            load = gr.Button("Load", elem_id="train-profile-load")
            name = gr.Textbox(label="Save as", placeholder="profile name", elem_id="train-profile-name")
            save = gr.Button("Save", elem_id="train-profile-save")
            refresh = gr.Button("↻", elem_id="train-profile-refresh", min_width=40, scale=0)

    def on_load(path_text):
        if not path_text:
            raise gr.Error("Pick a profile first.")
        values, dataset_values = load_form_profile(ctx, path_text)
        return [*values, *(dataset_values or [gr.skip()] * len(dataset))]

    def on_save(profile_name, *inputs):
        path = save_form_profile(ctx, profile_name, list(inputs[:len(form)]), list(inputs[len(form):]))
        gr.Info(f"Saved {ctx.workspace.relative(path)}.")
        return relisted(choices(), str(path))

    load.click(friendly(on_load), inputs=[chosen], outputs=[*form, *dataset])
    # read again when opened and on Refresh (runs started since the page loaded)
    listed = read_when_opened(chosen, choices)
    save.click(friendly(on_save), inputs=[name, *form, *dataset], outputs=[chosen, listed])
    refresh.click(lambda current: relisted(choices(), current), inputs=[chosen], outputs=[chosen, listed])
    return dataset
