"""What a resume may change in a run's settings.

A resume continues a run with the settings of its own `config.toml`; `--set`, `--preset`,
another `--config` or an edit of that file may change some of them for the rest of the run. They
are compared with the settings the checkpoint was written with (its state holds them). Three kinds:

- held in the checkpoint: the base model, the adapter's shape, the optimizer and the adapter's
  average (`optimizer.ema_decay`). The optimizer's saved state brings back its own lr, betas, eps
  and weight decay, so a new value would be ignored without a word; a resume cannot change these,
  start a new run instead;
- deciding the order and the crops of the data (batch size, accumulation, crop length, repeats,
  grouping, seed): the run would no longer continue as it began. Refused unless `--force`, as a changed
  dataset or number of processes is;
- everything else (epochs, step cap, learning-rate schedule, adapter dropout, the objective,
  saving, logging, previews, early stopping, precision and speed settings): taken from the step
  the run resumes at, and listed in a warning.

The run's `config.toml` is then rewritten with the settings in force, so a later resume (the Train
tab's included) keeps them; the warning in `events.jsonl` keeps what they were before.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from acestep.errors import TrainingError
from acestep.training.config import TrainingConfig, config_from_dict, config_to_dict, load_config, save_config
from acestep.training.config_schema import SECTIONS
from acestep.training.config_values import show
from acestep.training.state import load_state_entry

HELD_IN_CHECKPOINT = ("model.checkpoint", "adapter.type", "adapter.rank", "adapter.alpha", "adapter.targets",
                      "adapter.mlp", "adapter.modules", "adapter.lokr_factor", "optimizer.name", "optimizer.lr",
                      "optimizer.betas", "optimizer.eps", "optimizer.weight_decay", "optimizer.ema_decay")
DATA_ORDER = ("data.batch_size", "data.max_seconds", "data.repeats", "data.group_by_length",
              "optimizer.gradient_accumulation", "run.seed")
SCHEDULE = ("run.epochs", "run.max_steps", "optimizer.scheduler", "optimizer.warmup_steps", "optimizer.restarts")
RUN_FOLDER = ("run.output_dir", "run.name")  # the run folder is the one resumed, whatever these say


def changed_settings(saved: TrainingConfig, current: TrainingConfig) -> dict[str, tuple[Any, Any]]:
    """{"section.field": (saved value, current value)} for every setting that differs, in the
    order of the schema; the run folder's name and parent are not compared."""
    before, after = config_to_dict(saved), config_to_dict(current)
    return {f"{section}.{name}": (value, after[section][name])
            for section in SECTIONS for name, value in before[section].items()
            if value != after[section][name] and f"{section}.{name}" not in RUN_FOLDER}


class ResumeSettings:
    """The settings `config` a resume runs with, checked against those the checkpoint was written
    with (module docstring). `warning` is the text to log (empty when nothing changed); `save`
    writes them to the run's config at `config_path`."""

    def __init__(self, config_path: Path, checkpoint: Path, config: TrainingConfig, force: bool):
        self.path = Path(config_path)
        run_dir = self.path.parent
        trained = load_state_entry(checkpoint, "config")
        # a checkpoint from before its state held the settings: the run's config.toml says them
        self.saved = (config_from_dict(trained, f"{checkpoint}/state.json") if trained is not None
                      else load_config(self.path))
        self.changes = changed_settings(self.saved, config)
        self.config = config
        held = [name for name in self.changes if name in HELD_IN_CHECKPOINT]
        if held:
            raise TrainingError(
                f"Cannot resume {run_dir} with {self._listed(held)}: the checkpoint holds the base model, "
                "the adapter (and its average) and the optimizer with its hyper-parameters, and a resume "
                "continues them as they are. Start a new run with these settings, or resume without changing them.")
        reordered = [name for name in self.changes if name in DATA_ORDER]
        if reordered and not force:
            raise TrainingError(
                f"Cannot resume {run_dir} with {self._listed(reordered)}: the order and the crops of the data "
                "would differ from the run's so far; resume without changing them, or, to resume anyway, run "
                f"`acestep-trainer train --resume {run_dir} --force` with them.")

    def _listed(self, names: list[str]) -> str:
        return ", ".join(f"{name} {show(self.changes[name][0])} -> {show(self.changes[name][1])}" for name in names)

    @property
    def warning(self) -> str:
        if not self.changes:
            return ""
        notes = []
        if any(name in DATA_ORDER for name in self.changes):
            notes.append("forced: the data order differs from the run's so far")
        if any(name in SCHEDULE for name in self.changes):
            notes.append("the learning rate follows the new schedule from here, and may jump")
        return (f"resumed with changed settings: {self._listed(list(self.changes))}; they apply from here on "
                f"and {self.path.name} now holds them" + "".join(f" ({note})" for note in notes))

    def save(self) -> None:
        """Rewrite the run's config with the settings in force (its own run folder name kept)."""
        if self.changes:
            keep = {"output_dir": self.saved.run.output_dir, "name": self.saved.run.name}
            save_config(dataclasses.replace(self.config, run=dataclasses.replace(self.config.run, **keep)),
                        self.path)
