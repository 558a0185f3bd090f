"""The Train tab's form and what works on it: one input per field of `TrainingConfig`, generated
from the schema (`describe_fields`: its help is each input's info text), the basics on top and the
rest folded by section; and the GPU presets applied to it (its live VRAM estimate and run plan:
`train_estimate.py`).

    values = values_from_config(config)        # what the inputs show, in FORM_FIELDS order
    config = config_from_values(values)        # back, validated (ConfigError naming the field)

The conversions are plain functions, so tests run them without a browser; `build_form` only
creates the Gradio inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from acestep.gpu import SystemGpuReport
from acestep.training.config import TrainingConfig, config_from_dict, config_to_dict
from acestep.training.config_schema import FIELD_META, FIELD_TYPES, SECTIONS, describe_fields
from acestep.training.config_values import FieldType, Invalid, parse_text
from acestep.training.presets import NO_GPU_PRESET, apply_named_preset, list_presets, recommend_preset
from acestep.ui.context import AppContext

FORM_SOURCE = "Train tab"  # how ConfigError messages name the form
# The basics, shown on top, row by row; everything else is folded by section.
BASIC_ROWS = (
    ("data.tensors_dir", "run.name"),
    ("adapter.type", "adapter.rank", "adapter.alpha"),
    ("optimizer.lr", "run.epochs", "data.batch_size", "optimizer.gradient_accumulation"),
    ("data.max_seconds", "data.repeats", "run.gradient_checkpointing"),
)
BASIC_FIELDS = tuple(path for row in BASIC_ROWS for path in row)
PREVIEW_PREFIX = "run.preview_"
GROUPS = (("Model", "model"), ("Data", "data"), ("Adapter", "adapter"), ("Objective (loss and timesteps)", "objective"),
          ("Optimizer and learning-rate schedule", "optimizer"), ("Run: hardware, checkpoints, stopping", "run"),
          ("Previews during training", "preview"))
LABELS = {
    "data.tensors_dir": "Tensors folder", "run.name": "Run name", "adapter.type": "Adapter type",
    "adapter.rank": "Rank", "adapter.alpha": "Alpha", "optimizer.lr": "Learning rate", "run.epochs": "Epochs",
    "data.batch_size": "Batch size", "optimizer.gradient_accumulation": "Gradient accumulation",
    "data.max_seconds": "Crop seconds", "data.repeats": "Repeats per epoch",
    "run.gradient_checkpointing": "Gradient checkpointing",
    "model.checkpoint": "Model", "model.checkpoints_dir": "Checkpoints folder", "run.output_dir": "Runs folder",
    "model.quantization": "Frozen weights in 4 bits (nf4: QLoRA)",
    "optimizer.ema_decay": "Moving average (EMA) decay",
    "run.gradient_checkpointing_ratio": "Share of layers checkpointed",
    "run.cuda_graphs": "CUDA graphs (with compile)",
}
ELEM_IDS = {"data.tensors_dir": "train-tensors", "run.name": "train-run-name"}


@dataclass(frozen=True)
class FormField:
    """One config field as the form shows it."""

    path: str  # "optimizer.lr"
    type: FieldType
    default: Any
    help: str
    allowed: str
    choices: tuple[str, ...] | None

    @property
    def section(self) -> str:
        return self.path.split(".")[0]

    @property
    def name(self) -> str:
        return self.path.split(".")[1]

    @property
    def group(self) -> str:
        """The folded group the field goes in ("preview" for the run's preview settings)."""
        return "preview" if self.path.startswith(PREVIEW_PREFIX) else self.section

    @property
    def widget(self) -> str:
        """checkbox, dropdown, number or text."""
        if self.type.base == "bool":
            return "checkbox"
        if self.choices:
            return "dropdown"
        if self.type.base in ("int", "float"):
            return "number"
        return "text"

    @property
    def label(self) -> str:
        words = LABELS.get(self.path) or self.name.replace("_", " ").capitalize()
        return f"{words} ({self.path})"

    @property
    def info(self) -> str:
        """The field's help from the schema, then what it allows (the input's info text)."""
        extra = []
        if self.allowed and not self.allowed.startswith("one of") and self.allowed != "required":
            extra.append(f"Allowed: {self.allowed}.")
        if self.type.base.startswith("list["):
            extra.append("Comma-separated.")
        if self.type.optional:
            extra.append("Leave empty to unset.")
        return " ".join([self.help, *extra])

    @property
    def elem_id(self) -> str:
        return ELEM_IDS.get(self.path) or "train-" + self.path.replace(".", "-").replace("_", "-")


def _form_fields() -> tuple[FormField, ...]:
    return tuple(FormField(doc.path, FIELD_TYPES[doc.path], doc.default, doc.help, doc.allowed,
                           tuple(FIELD_META[doc.path].get("choices", ())) or None) for doc in describe_fields())


FORM_FIELDS: tuple[FormField, ...] = _form_fields()  # every config field, in file order
FIELDS_BY_PATH = {field.path: field for field in FORM_FIELDS}


def display_value(field: FormField, value: Any) -> Any:
    """What the field's input shows for a config value: lists as "a, b", unset text as ""."""
    if value is None:
        return "" if field.widget == "text" else None
    if field.type.base.startswith("list["):
        return ", ".join(item if isinstance(item, str) else repr(item) for item in value)
    if field.type.base == "int | str":
        if isinstance(value, str) and parse_text(value, field.type, field.path) != value:
            return json.dumps(value)  # "1" is GPU 1: quoted, so it does not read back as one device
        return str(value)
    return value


def parse_value(field: FormField, value: Any) -> Any:
    """The config value of what the input holds. A text that does not parse is passed on as it
    is, so the config's validation reports it with the field's name."""
    if field.widget == "number":
        if isinstance(value, float) and field.type.base == "int" and value.is_integer():
            return int(value)
        return value
    if field.widget != "text" or not isinstance(value, str):
        return value
    if FIELD_META[field.path].get("path"):
        value = value.strip()
    if field.type.optional and not value.strip():
        return None
    if field.type.base == "str":
        return value
    try:
        return parse_text(value, field.type, field.path)
    except Invalid:
        return value


def values_from_config(config: TrainingConfig) -> list[Any]:
    """The inputs' values for `config`, in FORM_FIELDS order."""
    data = config_to_dict(config)
    return [display_value(field, data[field.section][field.name]) for field in FORM_FIELDS]


def config_from_values(values: Sequence[Any], complete: bool = True) -> TrainingConfig:
    """The validated config the inputs hold (values in FORM_FIELDS order). Raises ConfigError
    listing every problem, each naming its field ("Train tab: data.batch_size must be at least 1,
    found 0"); `complete=False` allows an empty tensors folder (a form still being filled in)."""
    if len(values) != len(FORM_FIELDS):
        raise ValueError(f"expected {len(FORM_FIELDS)} form values, got {len(values)}")
    data: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for field, value in zip(FORM_FIELDS, values, strict=True):
        data[field.section][field.name] = parse_value(field, value)
    return config_from_dict(data, FORM_SOURCE, complete=complete)


def build_form(config: TrainingConfig,
               suggestions: dict[str, list[str]] | None = None) -> dict[str, gr.components.Component]:
    """Create one input per config field showing `config`: the basics, then a folded accordion per
    group. `suggestions` offers choices for text fields (tensors folders, models) while still
    taking any typed value. Returns the inputs by field path."""
    suggestions = suggestions or {}
    values = dict(zip((field.path for field in FORM_FIELDS), values_from_config(config), strict=True))
    inputs: dict[str, gr.components.Component] = {}
    for row in BASIC_ROWS:
        with gr.Row():
            for path in row:
                inputs[path] = _input(FIELDS_BY_PATH[path], values[path], suggestions.get(path))
    for title, group in GROUPS:
        fields = [field for field in FORM_FIELDS if field.group == group and field.path not in BASIC_FIELDS]
        with gr.Accordion(title, open=False, elem_id=f"train-group-{group}"):
            for start in range(0, len(fields), 3):
                with gr.Row():
                    for field in fields[start:start + 3]:
                        inputs[field.path] = _input(field, values[field.path], suggestions.get(field.path))
    return inputs


def ordered(inputs: dict[str, gr.components.Component]) -> list[gr.components.Component]:
    """The inputs in FORM_FIELDS order (the order of `values_from_config`)."""
    return [inputs[field.path] for field in FORM_FIELDS]


def _input(field: FormField, value: Any, suggestions: list[str] | None) -> gr.components.Component:
    common = {"label": field.label, "info": field.info, "elem_id": field.elem_id}
    if field.widget == "checkbox":
        return gr.Checkbox(value=value, **common)
    if field.widget == "dropdown":
        return gr.Dropdown(list(field.choices), value=value, **common)
    if field.widget == "number":
        step = 1 if field.type.base == "int" else 0.01
        return gr.Number(value=value, precision=0 if field.type.base == "int" else None, step=step, **common)
    if suggestions is not None:
        choices = list(dict.fromkeys([*suggestions, value] if value else suggestions))
        return gr.Dropdown(choices, value=value, allow_custom_value=True, **common)
    return gr.Textbox(value=value, **common)


# ---- presets and the starting form -----------------------------------------------------------------
def preset_choices() -> list[str]:
    """The names of the built-in and user presets (malformed user presets left out)."""
    return [preset.name for preset in list_presets(errors=[])]


def suggested_preset(report: SystemGpuReport) -> str:
    """The preset for the largest GPU's total memory; quick_test without a GPU."""
    totals = [gpu.total_bytes for gpu in report.gpus]
    return recommend_preset(max(totals)) if totals else NO_GPU_PRESET


def initial_config(ctx: AppContext, preset: str) -> TrainingConfig:
    """The form's first config: the workspace's folders (and what the demo pre-selects: its
    tensors, checkpoint and run name), then `preset`."""
    data = config_to_dict(TrainingConfig())
    if ctx.defaults.get("tensors"):
        data["data"]["tensors_dir"] = ctx.workspace.relative(Path(ctx.defaults["tensors"]))
    data["model"]["checkpoint"] = str(ctx.defaults.get("checkpoint") or data["model"]["checkpoint"])
    data["run"]["name"] = str(ctx.defaults.get("run_name", ""))
    data["model"]["checkpoints_dir"] = ctx.workspace.relative(ctx.workspace.checkpoints)
    data["run"]["output_dir"] = ctx.workspace.relative(ctx.workspace.runs)
    return apply_named_preset(config_from_dict(data, FORM_SOURCE, complete=False), preset)


def apply_preset_to_values(values: list, name: str) -> list:
    """The form's values with preset `name` applied over them (the fields it leaves out keep theirs)."""
    return values_from_config(apply_named_preset(config_from_values(values, complete=False), name))


def names_a_folder(ctx: AppContext, text: str) -> bool:
    """model.checkpoint names a folder (not a model name or Hugging Face id)."""
    return bool(text) and (text.startswith(("/", "~", ".")) or Path(text).is_absolute()
                           or (ctx.workspace.root / text).exists())
