"""Picking a saved adapter of a training run, as the Listen and Export & Merge tabs do: the runs
that hold one, the adapters of a run (final, best, the step checkpoints), what the picked one is,
and the two dropdowns with their refresh button, kept in step with the runs on disk.

    picker = build_adapter_picker(ctx, "export")                   # inside a tab's Blocks context
    picker.wire(ctx, outputs, lambda run, adapter: (...), ticks)   # what else follows a pick; ticks: the
                                                                   # tab's timer parts (acestep.ui.ticks)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from acestep.training.run_folders import (
    adapter_in_run,
    adapter_kind,
    adapter_label,
    adapter_metadata,
    run_adapters,
    run_folder,
    run_folders,
)
from acestep.ui.context import AppContext
from acestep.ui.jobs_panel import friendly
from acestep.ui.ticks import Ticks

NO_ADAPTER = "Pick a run with a saved adapter (runs appear here once they have saved one)."


def run_choices(ctx: AppContext) -> list[str]:
    """The runs that hold at least one complete adapter, newest first."""
    return [folder.name for folder in run_folders(ctx.workspace.runs) if run_adapters(folder)]


def checkpoint_choices(ctx: AppContext, run: str) -> list[tuple[str, str]]:
    """(label, name) of each complete adapter of the run: final, best, then the step checkpoints,
    newest first; [] for no run."""
    if not run:
        return []
    return [(adapter_label(name, folder), name) for name, folder in run_adapters(run_folder(ctx.workspace.runs, run))]


def default_checkpoint(choices: list[tuple[str, str]]) -> str | None:
    names = [name for _, name in choices]
    return "final" if "final" in names else (names[0] if names else None)


def picked_adapter(ctx: AppContext, run: str | None, checkpoint: str | None) -> Path | None:
    """The adapter folder picked, or None when the run or the adapter is not picked. Raises
    RunFolderError for a run or adapter that is not there."""
    if not run or not checkpoint:
        return None
    return adapter_in_run(run_folder(ctx.workspace.runs, run), checkpoint)


def adapter_info(ctx: AppContext, run: str, checkpoint: str) -> str:
    """Markdown about the picked adapter: type, rank, alpha, step, epoch, trigger tag, base model."""
    folder = picked_adapter(ctx, run, checkpoint)
    if folder is None:
        return NO_ADAPTER
    meta = adapter_metadata(folder)
    parts = [f"**{adapter_kind(folder)}**"]
    for key, label in (("rank", "rank"), ("alpha", "alpha"), ("step", "step"), ("epoch", "epoch"),
                       ("trigger_tag", "trigger tag")):
        if meta.get(key) not in (None, ""):
            parts.append(f"{label} {meta[key]}")
    if meta.get("checkpoint"):
        parts.append(f"trained on `{Path(str(meta['checkpoint'])).name}`")
    return " · ".join(parts) + f"\n\nFolder: `{ctx.workspace.relative(folder)}`"


def refreshed_choices(ctx: AppContext, run: str | None, checkpoint: str | None) -> tuple[list[str], str | None,
                                                                                          list, str | None]:
    """The runs, the run kept (else the newest), its adapters, and the adapter kept (else final)."""
    runs = run_choices(ctx)
    run = run if run in runs else (runs[0] if runs else None)
    choices = checkpoint_choices(ctx, run) if run else []
    checkpoint = checkpoint if checkpoint in [name for _, name in choices] else default_checkpoint(choices)
    return runs, run, choices, checkpoint


@dataclass
class AdapterPicker:
    """The run and adapter dropdowns, their refresh button, the adapter's description, and the
    runs last listed (`known`, None until the page's first tick); `run0`/`checkpoint0` are what the
    page was built with."""

    run: gr.Dropdown
    checkpoint: gr.Dropdown
    refresh: gr.Button
    info: gr.Markdown
    known: gr.State
    run0: str | None
    checkpoint0: str | None

    def wire(self, ctx: AppContext, outputs: Sequence, updates: Callable[[str | None, str | None], tuple],
             ticks: Ticks) -> None:
        """After a pick or a refresh, `updates(run, checkpoint)` gives the values of `outputs` (what
        else follows the adapter). At the first tick of `ticks`' timer the picker is refreshed (the page may
        have been built long before it was opened); later ticks add the runs that saved their
        first adapter since, leaving the rest as it is."""
        picked = [self.info, *outputs]

        def followers(run, checkpoint) -> tuple:
            return (adapter_info(ctx, run or "", checkpoint or ""), *updates(run, checkpoint))

        def on_run(name, checkpoint):
            _, name, choices, checkpoint = refreshed_choices(ctx, name, checkpoint)
            return (gr.Dropdown(choices=choices, value=checkpoint), *followers(name, checkpoint))

        def on_refresh(name, checkpoint):
            runs, name, choices, checkpoint = refreshed_choices(ctx, name, checkpoint)
            return (runs, gr.Dropdown(choices=runs, value=name), gr.Dropdown(choices=choices, value=checkpoint),
                    *followers(name, checkpoint))

        def on_tick(before, current, checkpoint):
            if before is None:  # the page's first tick: what it was built with may be old by now
                return on_refresh(current, checkpoint)
            now = run_choices(ctx)
            if now == before:
                return (gr.skip(),) * (3 + len(picked))
            runs = gr.Dropdown(choices=now, value=current if current in now else (now[0] if now else None))
            return (now, runs, *(gr.skip(),) * (1 + len(picked)))  # a form being filled in is left alone

        def on_checkpoint(run, checkpoint):
            values = followers(run, checkpoint)
            return values if len(values) > 1 else values[0]  # Gradio takes one output's value bare

        self.run.change(friendly(on_run), inputs=[self.run, self.checkpoint], outputs=[self.checkpoint, *picked])
        self.checkpoint.change(friendly(on_checkpoint), inputs=[self.run, self.checkpoint], outputs=picked)
        self.refresh.click(friendly(on_refresh), inputs=[self.run, self.checkpoint],
                           outputs=[self.known, self.run, self.checkpoint, *picked])
        ticks.add(friendly(on_tick), [self.known, self.run, self.checkpoint],
                  [self.known, self.run, self.checkpoint, *picked])


def build_adapter_picker(ctx: AppContext, prefix: str) -> AdapterPicker:
    """The picker's components in the current Blocks context, with elem_ids `<prefix>-run`,
    `<prefix>-checkpoint`, `<prefix>-refresh` and `<prefix>-info`; the newest run's final adapter
    is picked."""
    runs = run_choices(ctx)
    run0 = runs[0] if runs else None
    choices0 = checkpoint_choices(ctx, run0) if run0 else []
    checkpoint0 = default_checkpoint(choices0)
    with gr.Row():
        run = gr.Dropdown(runs, value=run0, label="Run", elem_id=f"{prefix}-run")
        checkpoint = gr.Dropdown(choices0, value=checkpoint0, label="Adapter", elem_id=f"{prefix}-checkpoint")
        refresh = gr.Button("Refresh", scale=0, elem_id=f"{prefix}-refresh")
    info = gr.Markdown(adapter_info(ctx, run0 or "", checkpoint0 or ""), elem_id=f"{prefix}-info")
    return AdapterPicker(run, checkpoint, refresh, info, gr.State(None), run0, checkpoint0)
