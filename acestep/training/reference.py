"""The reference tables of TRAINING_GUIDE.md (and the preset table of README.md), written from the
code so they cannot drift: every training option (from the config schema) and the GPU presets
(from their JSON files).

    env/bin/python -m acestep.training.reference TRAINING_GUIDE.md README.md           # rewrite the tables
    env/bin/python -m acestep.training.reference TRAINING_GUIDE.md README.md --check   # exit 1 when stale

Each table sits between `<!-- reference:NAME -->` and `<!-- /reference:NAME -->` in a document;
the text around them is written by hand. tests/test_guide.py fails when a table is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.config_schema import describe_fields
from acestep.training.presets import BUILTIN_ORDER, apply_named_preset, load_preset

SECTION_TITLES = {"model": "Model", "data": "Data", "adapter": "Adapter", "objective": "Objective (loss and timesteps)",
                  "optimizer": "Optimizer and learning-rate schedule", "run": "Run: hardware, checkpoints, stopping",
                  "preview": "Previews during training"}


def _value(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]" if value else "[]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def options_markdown() -> str:
    """Every option of the training config, by section: default, allowed values, what it does."""
    lines = []
    section = None
    for doc in describe_fields():
        current = doc.path.split(".")[0]
        if current != section:
            section = current
            lines += ["", f"**{SECTION_TITLES.get(section, section)}** (`[{section}]`)", "",
                      "| Option | Default | Allowed | What it does |", "|---|---|---|---|"]
        lines.append(f"| `{doc.path}` | `{_value(doc.default)}` | {_cell(doc.allowed or 'any')} | {_cell(doc.help)} |")
    return "\n".join(lines[1:])


def _preset_config(name: str) -> TrainingConfig:
    return apply_named_preset(apply_overrides(TrainingConfig(), ["data.tensors_dir=tensors"]), name)


TABLE_CAPABILITY = (8, 6)  # the presets' table is for an RTX 30-series card


def presets_summary_markdown() -> str:
    """One row per built-in preset: the card it is for and its main settings, with the estimated
    peak memory on the 2B model on a GPU of compute capability 8.x (RTX 30 and 40 series, A100: more
    than from 9.0 on, where cuDNN's attention keeps less)."""
    from acestep.gpu.estimate import GIB, estimate_vram

    target_names = {"attention": "self + cross attn", "self_attention": "self attn", "cross_attention": "cross attn"}
    lines = ["| Preset | Card | Rank / alpha / dropout | Targets | Optimizer, lr | Schedule, warmup | Batch x accum | "
             "Crop | Grad. ckpt | Epochs / patience / best after / save every | Estimated peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in BUILTIN_ORDER:
        preset, config = load_preset(name), _preset_config(name)
        a, o, d, r = config.adapter, config.optimizer, config.data, config.run
        card = f"{preset.min_vram_gib:g} GB+" if preset.min_vram_gib else "any"
        targets = target_names.get(a.targets, a.targets) + (" + MLP" if a.mlp else "")
        extra = f", Min-SNR {config.objective.min_snr_gamma:g}" if config.objective.min_snr_gamma else ""
        crop = f"{d.max_seconds:g} s" if d.max_seconds else "whole"
        peak = estimate_vram(config, capability=TABLE_CAPABILITY).total_bytes / GIB
        lines.append(f"| `{name}` | {card} | {a.rank} / {a.alpha:g} / {a.dropout:g} | {targets} | {o.name}, {o.lr:g}"
                     f"{extra} | {o.scheduler}, {o.warmup_steps} | {d.batch_size} x {o.gradient_accumulation} | "
                     f"{crop} | {'on' if r.gradient_checkpointing else 'off'} | {r.epochs} / "
                     f"{r.early_stopping_patience} / {r.best_after_epochs} / {r.save_every_epochs} | {peak:.1f} GiB |")
    return "\n".join(lines)


def preset_details_markdown() -> str:
    """Each built-in preset in full: every setting it makes, and why (the preset file's notes)."""
    lines = []
    for name in BUILTIN_ORDER:
        preset = load_preset(name)
        lines += [f"**`{name}`**: {_cell(preset.description)}", "", "| Setting | Value | Why |", "|---|---|---|"]
        for section, values in preset.config.items():
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                path = f"{section}.{key}"
                lines.append(f"| `{path}` | `{_value(value)}` | {_cell(preset.notes.get(path, ''))} |")
        lines.append("")
    return "\n".join(lines).rstrip()


TABLES: dict[str, Callable[[], str]] = {
    "options": options_markdown,
    "presets": presets_summary_markdown,
    "preset-details": preset_details_markdown,
}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- reference:{re.escape(name)} -->)\n(.*?)\n?(<!-- /reference:{re.escape(name)} -->)",
                      re.DOTALL)


def render_guide(text: str) -> str:
    """`text` with every reference table it holds rewritten. Raises ValueError when it holds none."""
    found = False
    for name, render in TABLES.items():
        pattern = _block(name)
        if not pattern.search(text):
            continue
        found = True
        table = render()
        text = pattern.sub(lambda match, table=table: f"{match.group(1)}\n{table}\n{match.group(3)}", text)
    if not found:
        raise ValueError("it holds no <!-- reference:NAME --> ... <!-- /reference:NAME --> block (NAME: "
                         + ", ".join(TABLES) + ")")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("documents", type=Path, nargs="+", help="the documents to update (TRAINING_GUIDE.md README.md)")
    parser.add_argument("--check", action="store_true", help="only report whether the tables are current")
    args = parser.parse_args(argv)
    status = 0
    for document in args.documents:
        text = document.read_text(encoding="utf-8")
        try:
            new = render_guide(text)
        except ValueError as error:
            print(f"{document}: {error}", file=sys.stderr)
            status = 1
            continue
        if new == text:
            print(f"{document}: reference tables are current")
        elif args.check:
            print(f"{document}: reference tables are stale; run python -m acestep.training.reference {document}",
                  file=sys.stderr)
            status = 1
        else:
            document.write_text(new, encoding="utf-8")
            print(f"{document}: reference tables rewritten")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
