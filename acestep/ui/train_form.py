"""The Train tab's form and what works on it: one input per field of `TrainingConfig`, generated
from the schema (`describe_fields`: its help is each input's info text), the basics on top and the
rest folded by section; the GPU presets applied to it; and its live VRAM estimate.

    values = values_from_config(config)        # what the inputs show, in FORM_FIELDS order
    config = config_from_values(values)        # back, validated (ConfigError naming the field)

The conversions are plain functions, so tests run them without a browser; `build_form` only
creates the Gradio inputs. The estimate needs the adapter's real parameter shapes, which
`estimate_vram` gets from diffusers and PEFT, so it runs in a helper process (`VramEstimator`):
the UI process never imports torch.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

import acestep
from acestep.errors import AceStepError, CheckpointError
from acestep.gpu import SystemGpuReport
from acestep.gpu.estimate import GIB, gib
from acestep.models.checkpoints import DIT, resolve_model_path
from acestep.training import disk_space
from acestep.training.config import TrainingConfig, config_from_dict, config_to_dict
from acestep.training.config_schema import FIELD_META, FIELD_TYPES, SECTIONS, describe_fields
from acestep.training.config_values import FieldType, Invalid, parse_text
from acestep.training.plan import plan_for
from acestep.training.presets import NO_GPU_PRESET, apply_named_preset, list_presets, recommend_preset
from acestep.ui.context import AppContext, PathRefused, holds_tensors

FORM_SOURCE = "Train tab"  # how ConfigError messages name the form
# The basics, shown on top, row by row; everything else is folded by section.
BASIC_ROWS = (
    ("data.tensors_dir", "run.name"),
    ("adapter.type", "adapter.rank", "adapter.alpha"),
    ("optimizer.lr", "run.epochs", "data.batch_size", "optimizer.gradient_accumulation"),
    ("data.max_seconds", "run.gradient_checkpointing"),
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
    "data.max_seconds": "Crop seconds", "run.gradient_checkpointing": "Gradient checkpointing",
    "model.checkpoint": "Model", "model.checkpoints_dir": "Checkpoints folder", "run.output_dir": "Runs folder",
    "model.quantization": "Frozen weights in 4 bits (nf4: QLoRA)",
    "optimizer.ema_decay": "Moving average (EMA) decay",
    "run.gradient_checkpointing_ratio": "Share of layers checkpointed",
}
ELEM_IDS = {"data.tensors_dir": "train-tensors", "run.name": "train-run-name"}
ESTIMATE_TIMEOUT = 300.0  # seconds; the first estimate imports torch and diffusers in the helper process


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


# ---- the VRAM estimate --------------------------------------------------------------------------------
# The helper process: one JSON request per line in, one JSON reply per line out. What libraries
# print goes to stderr, so it never mixes with the replies.
ESTIMATE_WORKER = r"""
import json, os, sys
replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
from acestep.gpu.estimate import estimate_vram
from acestep.gpu.fit import settings_that_fit
from acestep.models.config import read_dit_config
from acestep.training.config import config_from_dict
for line in sys.stdin:
    try:
        request = json.loads(line)
        config = config_from_dict(request["config"], "estimate", complete=False)
        model = read_dit_config(request["model"]) if request["model"] else None
        reply = {"estimates": []}
        for capability, free in request["gpus"]:
            estimate = estimate_vram(config, model, capability=tuple(capability) if capability else None)
            fits = settings_that_fit(config, estimate, free) if free is not None and estimate.total_bytes > free else []
            reply["estimates"].append({"total_bytes": estimate.total_bytes, "describe": estimate.describe(),
                                       "fits": [[list(f.changes), f.estimate.total_bytes] for f in fits],
                                       "checkpoint_sizes": list(vars(estimate.checkpoint_sizes).values())})
    except Exception as error:
        reply = {"error": f"{type(error).__name__}: {error}"}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


class VramEstimator:
    """`estimate_vram` in a helper process that lives as long as this object (the adapter's
    shapes are cached there, so estimates after the first take milliseconds). Thread-safe.
    `script` is the helper's code (tests pass a failing one)."""

    def __init__(self, timeout: float = ESTIMATE_TIMEOUT, script: str = ESTIMATE_WORKER):
        self.timeout, self.script = timeout, script
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)

    def estimate(self, config: TrainingConfig, model_dir: Path | None, gpus: list[tuple]) -> list[dict]:
        """One {"total_bytes", "describe", "fits"} per (compute capability, free bytes) in `gpus`
        (capability None: unknown, the worst case; free None: unknown). "fits" lists, when the run
        needs more than is free, [changes, total bytes] of `settings_that_fit`. Raises AceStepError
        when the estimate fails, or the helper ends or does not answer within the timeout (with the
        helper's last error line; the next call starts a new helper)."""
        request = json.dumps({"config": config_to_dict(config), "model": str(model_dir) if model_dir else None,
                              "gpus": [[list(c) if c else None, free] for c, free in gpus]})
        with self._lock:
            process = self._start()
            try:
                process.stdin.write(request + "\n")
                process.stdin.flush()
                reply = self._replies.get(timeout=self.timeout)
            except (OSError, queue.Empty):
                reply = None
            if reply is None:
                self.close()
                self._stderr_reader.join(timeout=5)  # its last lines say why
                last = next((line for line in reversed(self._stderr) if line.strip()), "no output")
                raise AceStepError(f"The VRAM estimate's helper process ended or hung (its last error: "
                                   f"{last.strip()}); it is started again at the next change.")
        if "error" in reply:
            raise AceStepError(f"The VRAM estimate failed: {reply['error']}")
        return reply["estimates"]

    def close(self) -> None:
        """End the helper process (a later estimate starts a new one)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _start(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._replies, self._stderr = queue.Queue(), deque(maxlen=20)
        # From the folder holding the acestep package, so a source checkout imports this acestep.
        self._process = subprocess.Popen([sys.executable, "-c", self.script], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         cwd=Path(acestep.__file__).resolve().parent.parent)
        threading.Thread(target=_read_replies, args=(self._process.stdout, self._replies), daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._stderr.extend, args=(self._process.stderr,), daemon=True)
        self._stderr_reader.start()
        return self._process


def _read_replies(stream, replies: queue.Queue) -> None:
    for line in stream:
        try:
            replies.put(json.loads(line))
        except json.JSONDecodeError:
            replies.put({"error": f"unreadable reply {line.strip()[:200]!r}"})
    replies.put(None)  # the helper ended


def dit_folder(ctx: AppContext, config: TrainingConfig) -> Path | None:
    """The model folder of model.checkpoint when it is on disk inside the app's folders, else None."""
    workspace = ctx.workspace
    try:
        folder = (workspace.check_path(config.model.checkpoints_dir, what="checkpoints folder")
                  if config.model.checkpoints_dir else workspace.checkpoints)
        checkpoint = config.model.checkpoint.strip()
        if names_a_folder(ctx, checkpoint):
            checkpoint = str(workspace.check_path(checkpoint, must_exist=True, what="model"))
        return resolve_model_path(checkpoint, DIT, checkpoints_dir=folder)
    except (CheckpointError, PathRefused):
        return None


def estimate_text(ctx: AppContext, config: TrainingConfig, report: SystemGpuReport,
                  estimator: VramEstimator) -> str:
    """Markdown: the run's estimated peak VRAM, whether it fits each GPU's free memory now, and
    the estimate by part. Raises AceStepError when the estimate cannot be made."""
    model = dit_folder(ctx, config)
    pairs = list(dict.fromkeys((gpu.compute_capability, gpu.free_bytes) for gpu in report.gpus)) or [(None, None)]
    estimates = dict(zip(pairs, estimator.estimate(config, model, pairs), strict=True))
    first = next(iter(estimates.values()))
    lines = [f"**Estimated peak VRAM: {gib(first['total_bytes'])}**"
             + ("" if model else f" (for the 2B ACE-Step 1.5 DiT: `{config.model.checkpoint}` is not on disk)")]
    if not report.gpus:
        lines.append(f"No GPU to compare it with ({report.message}).")
    for gpu in report.gpus:
        estimate = estimates[(gpu.compute_capability, gpu.free_bytes)]
        spare = gpu.free_bytes - estimate["total_bytes"]
        if spare >= 0:
            verdict = f"fits: {gib(gpu.free_bytes)} free, {spare / GIB:.2f} GiB to spare"
        else:
            fits = "; ".join(" ".join(f"`{change}`" for change in changes) + f" (about {gib(total)})"
                             for changes, total in estimate["fits"])
            verdict = (f"**does not fit now**: {gib(gpu.free_bytes)} free, {-spare / GIB:.2f} GiB short; "
                       + (f"these settings would fit: {fits}" if fits else
                          "no usual setting makes it fit: free memory on the GPU"))
        lines.append(f"GPU {gpu.index} {gpu.name}: {verdict}.")
    lines.append(f"```\n{first['describe']}\n```")
    try:
        run_dir = disk_space.run_folder_of(ctx.workspace.check_path(config.run.output_dir, what="runs folder"),
                                           config.run.name)
    except AceStepError:  # a runs folder outside the workspace: the Start says so
        return "\n\n".join(lines)
    lines.append(disk_space.disk_summary(run_dir, disk_space.CheckpointSizes(*first["checkpoint_sizes"]),
                                         config.run.keep_checkpoints))
    return "\n\n".join(lines)


def plan_text(ctx: AppContext, config: TrainingConfig, report: SystemGpuReport) -> str:
    """Markdown: the run's plan (`acestep.training.plan`) over the chosen tensors folder: songs,
    batches and optimizer steps per epoch, steps in all, what the crops show, and what deserves a
    look; '' until a folder with a manifest is chosen (Start says what is missing)."""
    if not (config.data.tensors_dir or "").strip():
        return ""
    try:
        folder = ctx.workspace.check_path(config.data.tensors_dir, what="tensors folder (data.tensors_dir)")
        if not holds_tensors(folder):
            return ""
        plan = plan_for(replace(config, data=replace(config.data, tensors_dir=str(folder))), len(report.gpus))
    except AceStepError as error:
        return f"**Run plan**: {error}"
    notes = "".join(f"\n- {note}" for note in plan.notes())
    return f"**Run plan.** {plan.describe()}" + (f"\n{notes}" if notes else "")


def names_a_folder(ctx: AppContext, text: str) -> bool:
    """model.checkpoint names a folder (not a model name or Hugging Face id)."""
    return bool(text) and (text.startswith(("/", "~", ".")) or Path(text).is_absolute()
                           or (ctx.workspace.root / text).exists())
