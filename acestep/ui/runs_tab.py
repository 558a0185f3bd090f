"""The Runs tab: the history of training runs in the workspace (status, steps, losses, adapter,
what the last preview measured), one run's config.toml, and the curves of several runs on one
plot: their losses, or their previews' adapter effect and latent distance to the songs.

Reads run folders only (`acestep.training.run_folders`: TOML and JSON), so the UI process stays light.
A run's status comes from its newest train job while one is known, else from its last events.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import pandas as pd

from acestep.files import size_text
from acestep.jobs import TRAIN_KIND
from acestep.training.run_cleanup import delete_checkpoints, delete_run
from acestep.training.run_folders import (
    RUN_HEADERS,
    RunFolderError,
    read_events,
    run_adapters,
    run_folder,
    run_folders,
    run_row,
    summarize_run,
    summarize_runs,
    train_jobs_by_run,
)
from acestep.training.run_layout import CONFIG_FILE, EVENTS_FILE
from acestep.ui.context import AppContext
from acestep.ui.jobs_panel import any_active, friendly
from acestep.ui.ticks import Ticks

# curve shown -> (event type, field, the key inside the field or None, the plot's y title)
METRICS = {"training loss": ("log", "loss", None, "loss"), "epoch loss": ("epoch", "loss", None, "loss"),
           "validation loss": ("validation", "val_loss", None, "loss"),
           "preview effect": ("preview", "effect_db", "1", "adapter effect at strength 1 (dB)"),
           "preview distance to the songs": ("preview", "songs_distance", "1",
                                             "latent distance to the songs at strength 1")}
DEFAULT_METRIC = "training loss"
CURVE_COLUMNS = ["step", "value", "run"]
REFRESH_SECONDS = 5.0  # while a training job runs or waits; idle, ticks.IDLE_POLL_SECONDS


def run_rows(ctx: AppContext) -> list[list[str]]:
    """One row per run folder in the workspace, newest first (jobs reconciled first)."""
    return [run_row(summary) for summary in summarize_runs(ctx.workspace.runs, ctx.jobs.poll())]


def run_names(ctx: AppContext) -> list[str]:
    return [folder.name for folder in run_folders(ctx.workspace.runs)]


def run_curves(runs_dir: Path, names: Sequence[str], metric: str | None = DEFAULT_METRIC) -> pd.DataFrame:
    """The `metric` (a METRICS name) of each named run as rows (step, value, run): one series per
    run for a LinePlot coloured by `run`. A step logged twice (a run resumed from an earlier
    checkpoint) keeps its last value. Unknown names are skipped."""
    metric = metric or DEFAULT_METRIC
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    kind, field, key, _ = METRICS[metric]
    rows = []
    for name in names or ():
        path = Path(runs_dir) / name / EVENTS_FILE
        if not name or Path(name).name != name or not path.is_file():
            continue
        for event in read_events(path):
            value, step = event.get(field), event.get("step")
            if key is not None:
                value = value.get(key) if isinstance(value, dict) else None
            if (event["type"] == kind and isinstance(step, int) and isinstance(value, (int, float))
                    and not isinstance(value, bool)):
                rows.append((step, float(value), name))
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS).astype({"step": "int64", "value": "float64", "run": "str"})
    return frame.drop_duplicates(subset=["run", "step"], keep="last").reset_index(drop=True)


def plot_value(frame: pd.DataFrame) -> pd.DataFrame | None:
    """What the LinePlot gets: None for no points. (Gradio 6 draws every later series without a
    colour when a plot coloured by a column starts from an empty frame.)"""
    return None if frame.empty else frame


def curve_plot(runs_dir: Path, names: Sequence[str], metric: str | None):
    """The LinePlot's update for the runs and the curve picked: its points and its y title."""
    return gr.LinePlot(plot_value(run_curves(runs_dir, names, metric)), y_title=METRICS[metric or DEFAULT_METRIC][3])


def run_config_text(ctx: AppContext, name: str) -> str:
    """The run's config.toml as written ('' before one is picked). Raises RunFolderError for an
    unknown run."""
    if not name:
        return ""
    return (run_folder(ctx.workspace.runs, name) / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")


def run_details(ctx: AppContext, name: str) -> str:
    """Markdown about one run: status and its message, folder, adapters to export."""
    if not name:
        return "Pick a run in the table to see its config."
    folder = run_folder(ctx.workspace.runs, name)
    job = train_jobs_by_run(ctx.jobs.list_jobs()).get(folder.resolve())
    summary = summarize_run(folder, job)
    lines = [f"**{summary.name}**: {summary.status}" + (f" ({summary.message})" if summary.message else ""),
             f"Folder: `{ctx.workspace.relative(folder)}`"]
    adapters = [name for name, _ in run_adapters(folder)]
    lines.append("Adapters: " + (", ".join(f"`{a}`" for a in adapters) if adapters else "none yet")
                 + " (export or merge them in the Export & Merge tab).")
    if job is not None:
        lines.append(f"Job: `{job.id}`")
    return "\n\n".join(lines)


def delete_from_runs(ctx: AppContext, name: str, what: str) -> str:
    """Delete a run (`what` "run") or its step checkpoints ("checkpoints") from the workspace; the
    message to show. Raises RunFolderError for an unknown run, one a job trains or waits to
    train, one a process trains, or (checkpoints) one that has not finished."""
    folder = run_folder(ctx.workspace.runs, name)
    job = train_jobs_by_run(ctx.jobs.poll()).get(folder.resolve())
    if job is not None and not job.finished:
        raise RunFolderError(f"Run {name} is {job.status} as job {job.id}; stop it first (Train tab, or the jobs "
                             "table there).")
    if what == "run":
        return f"Deleted run {name} ({size_text(delete_run(folder))} freed)."
    return (f"Deleted the checkpoints of run {name} ({size_text(delete_checkpoints(folder))} freed); its adapters "
            "stay, and it can no longer be resumed.")


def build_runs_tab(ctx: AppContext) -> None:
    """Add the Runs tab's components to the current Blocks context."""
    gr.Markdown("Every training run in the workspace's `runs/` folder. Pick runs to compare their curves (losses, "
                "or what their previews measured at strength 1); click a row to see its config, or to delete its "
                "checkpoints (the disk a finished run no longer needs) or the whole run.")
    names = run_names(ctx)
    table = gr.Dataframe(headers=RUN_HEADERS, value=lambda: run_rows(ctx), interactive=False, elem_id="runs-table")
    refresh = gr.Button("Refresh", elem_id="runs-refresh")
    with gr.Row():
        compare = gr.Dropdown(names, value=names[:1], multiselect=True, label="Runs to compare", scale=3,
                              elem_id="runs-compare")
        metric = gr.Radio(list(METRICS), value=DEFAULT_METRIC, label="Curve", elem_id="runs-metric")
    plot = gr.LinePlot(plot_value(run_curves(ctx.workspace.runs, names[:1])), x="step", y="value", color="run",
                       x_title="step", y_title="loss", label="Curves", elem_id="runs-plot")
    selected = gr.Dropdown(names, value=None, label="Run", elem_id="runs-selected")
    details = gr.Markdown(run_details(ctx, ""), elem_id="runs-details")
    with gr.Row():
        delete_checkpoints_button = gr.Button("Delete its checkpoints (keep its adapters)", size="sm",
                                              elem_id="runs-delete-checkpoints")
        delete_run_button = gr.Button("Delete the run", variant="stop", size="sm", elem_id="runs-delete")
    confirmed = gr.Checkbox(False, visible=False, elem_id="runs-delete-confirmed")  # the browser's confirm() answer
    config = gr.Code(language=None, label=CONFIG_FILE, interactive=False, elem_id="runs-config")
    known = gr.State(names)
    ticks = Ticks(gr.Timer(REFRESH_SECONDS), busy=lambda: any_active(ctx, [TRAIN_KIND]), quick=REFRESH_SECONDS)

    def select(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        return values[row][0] if 0 <= row < len(values) else gr.skip()

    def refresh_all(before, chosen, current, curve):
        rows = run_rows(ctx)
        now = [row[0] for row in rows]
        chosen = [name for name in chosen or [] if name in now]
        if not chosen and now != before:
            chosen = now[:1]  # a new run and nothing picked: show the newest run's curve
        plot_data = curve_plot(ctx.workspace.runs, chosen, curve)
        if now == before:  # leave the menus alone while someone may have one open
            return rows, now, gr.skip(), gr.skip(), plot_data
        return (rows, now, gr.Dropdown(choices=now, value=chosen),
                gr.Dropdown(choices=now, value=current if current in now else None), plot_data)

    def deleter(what: str):
        def on_delete(name, yes):
            if not yes or not name:
                return gr.skip(), gr.skip(), gr.skip()
            gr.Info(friendly(delete_from_runs)(ctx, name, what))
            kept = name if what == "checkpoints" else ""
            return run_rows(ctx), run_details(ctx, kept), run_config_text(ctx, kept)
        return on_delete

    for button, what, question in (
            (delete_checkpoints_button, "checkpoints", "Delete the step checkpoints of run ${name}? Its adapters "
                                                      "(best, final) stay; it can no longer be resumed."),
            (delete_run_button, "run", "Delete run ${name} and everything in it (adapters, previews, logs)?")):
        button.click(deleter(what), inputs=[selected, confirmed], outputs=[table, details, config],
                     js=f"(name, yes) => [name, !!name && confirm(`{question}`)]")
    table.select(select, inputs=[table], outputs=[selected])
    selected.change(friendly(lambda name: (run_details(ctx, name), run_config_text(ctx, name))), inputs=[selected],
                    outputs=[details, config])
    gr.on([compare.change, metric.change],
          lambda chosen, curve: curve_plot(ctx.workspace.runs, chosen, curve),
          inputs=[compare, metric], outputs=[plot])
    refresh_inputs, refresh_outputs = [known, compare, selected, metric], [table, known, compare, selected, plot]
    refreshed = friendly(refresh_all)
    refresh.click(refreshed, inputs=refresh_inputs, outputs=refresh_outputs)
    ticks.add(refreshed, refresh_inputs, refresh_outputs)
    ticks.wire()
