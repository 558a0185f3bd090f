"""The Runs tab: the history of training runs in the workspace (status, steps, losses, adapter,
what the last preview measured), one run's config.toml, and the curves of several runs on one
plot: their losses, or their previews' adapter effect and latent distance to the songs.

Reads run folders only (`acestep.training.run_folders`: TOML and JSON), so the UI process stays light.
A run's status comes from its newest train job while one is known, else from its last events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
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
from acestep.ui.jobs_panel import any_active, friendly, warn_refusals
from acestep.ui.ticks import Ticks

# curve shown -> (event type, field, the key inside the field or None, the plot's y title)
METRICS = {"training loss": ("log", "loss", None, "loss"), "epoch loss": ("epoch", "loss", None, "loss"),
           "validation loss": ("validation", "val_loss", None, "loss"),
           "preview effect": ("preview", "effect_db", "1", "adapter effect at strength 1 (dB)"),
           "preview distance to the songs": ("preview", "songs_distance", "1",
                                             "latent distance to the songs at strength 1")}
DEFAULT_METRIC = "training loss"
CURVE_COLUMNS = ["step", "value", "run"]
# Vega-Lite's own ten category colours (what the plot would pick), given to the runs in the order chosen
RUN_COLOURS = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
               "#bab0ac")
FORCE_LABEL = "Also for a run that has not finished"
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


def run_colours(names: Sequence[str], plotted: Iterable[str]) -> dict[str, str]:
    """{run: colour} for the `plotted` runs (those with points), each coloured by its place among
    `names` (the runs chosen, in the order chosen)."""
    places = {name: place for place, name in enumerate(dict.fromkeys(names or ()))}
    return {run: RUN_COLOURS[places.get(run, 0) % len(RUN_COLOURS)] for run in dict.fromkeys(plotted)}


def plot_settings(shown: dict | None, names: Sequence[str], metric: str | None):
    """The LinePlot's update for the points it shows (`shown`, its value as the page sends it back:
    {"columns": [...], "data": [[...], ...], ...} or None), the runs chosen and the curve picked:
    the colour of each run plotted and the y title, without the points.

    A Gradio 6 LinePlot builds its colour scale from the runs in its points only when one of these
    settings changes, and takes points that arrive with such a change too late (it draws the old
    ones): a run added later is drawn without a colour. So the points go first, alone, and these
    follow from the plot's change event; the colours change whenever the runs plotted do."""
    columns, rows = (shown or {}).get("columns") or [], (shown or {}).get("data") or []
    runs = [row[columns.index("run")] for row in rows] if "run" in columns else []
    return gr.LinePlot(color_map=run_colours(names, runs), y_title=METRICS[metric or DEFAULT_METRIC][3])


def plot_shows(shown: dict | None, curves: pd.DataFrame) -> bool:
    """Whether the plot's value `shown` (as the page sends it back) holds the points of `curves`."""
    return shown is not None and shown.get("data") == json.loads(curves.to_json(orient="split"))["data"]


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


def delete_from_runs(ctx: AppContext, name: str, what: str, force: bool = False) -> str:
    """Delete a run (`what` "run") or its step checkpoints ("checkpoints") from the workspace; the
    message to show. Raises RunFolderError for an unknown run, one a job trains or waits to
    train, one a process trains, or (checkpoints, unless `force`) one that has not finished."""
    folder = run_folder(ctx.workspace.runs, name)
    job = train_jobs_by_run(ctx.jobs.poll()).get(folder.resolve())
    if job is not None and not job.finished:
        raise RunFolderError(f"Run {name} is {job.status} as job {job.id}; stop it first (Train tab, or the jobs "
                             "table there).")
    if what == "run":
        return f"Deleted run {name} ({size_text(delete_run(folder))} freed)."
    freed = delete_checkpoints(folder, force=force, how_to_force=f'tick "{FORCE_LABEL}" to delete them anyway')
    return (f"Deleted the checkpoints of run {name} ({size_text(freed)} freed); its adapters stay, and it can no "
            "longer be resumed.")


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
    curves = run_curves(ctx.workspace.runs, names[:1])  # an empty frame for none: a plot without a value
    # drops its drawing, and Gradio's resize handler then fails on it
    plot = gr.LinePlot(curves, x="step", y="value", color="run", color_map=run_colours(names[:1], curves["run"]),
                       x_title="step", y_title="loss", label="Curves", elem_id="runs-plot")
    selected = gr.Dropdown(names, value=None, label="Run", elem_id="runs-selected")
    details = gr.Markdown(run_details(ctx, ""), elem_id="runs-details")
    with gr.Row():
        delete_checkpoints_button = gr.Button("Delete its checkpoints (keep its adapters)", size="sm",
                                              elem_id="runs-delete-checkpoints")
        force = gr.Checkbox(False, label=FORCE_LABEL, info="It can then no longer be resumed.",
                            elem_id="runs-delete-force")
        delete_run_button = gr.Button("Delete the run", variant="stop", size="sm", elem_id="runs-delete")
    confirmed = gr.Checkbox(False, visible=False, elem_id="runs-delete-confirmed")  # the browser's confirm() answer
    config = gr.Code(language=None, label=CONFIG_FILE, interactive=False, elem_id="runs-config")
    known = gr.State(names)
    ticks = Ticks(gr.Timer(REFRESH_SECONDS), busy=lambda: any_active(ctx, [TRAIN_KIND]), quick=REFRESH_SECONDS)

    def select(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        return values[row][0] if 0 <= row < len(values) else gr.skip()

    def refresh_all(before, chosen, current, curve, shown):
        rows = run_rows(ctx)
        now = [row[0] for row in rows]
        chosen = [name for name in chosen or [] if name in now]
        if not chosen and now != before:
            chosen = now[:1]  # a new run and nothing picked: show the newest run's curve
        curves = run_curves(ctx.workspace.runs, chosen, curve)
        plot_data = gr.skip() if plot_shows(shown, curves) else curves  # unchanged: no redraw, no change event
        if now == before:  # leave the menus alone while someone may have one open
            return rows, now, gr.skip(), gr.skip(), plot_data
        return (rows, now, gr.Dropdown(choices=now, value=chosen),
                gr.Dropdown(choices=now, value=current if current in now else None), plot_data)

    def deleter(what: str):
        def on_delete(name, forced, yes):
            if not yes or not name:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            gr.Info(delete_from_runs(ctx, name, what, forced))
            kept = name if what == "checkpoints" else ""
            return run_rows(ctx), run_details(ctx, kept), run_config_text(ctx, kept), False
        return warn_refusals(on_delete)  # refused: a notice, and the table, details and config as they were

    for button, what, question in (
            (delete_checkpoints_button, "checkpoints", "Delete the step checkpoints of run ${name}"
                                                      "${forced ? ', even if it has not finished' : ''}? Its adapters "
                                                      "(best, final) stay; it can then no longer be resumed."),
            (delete_run_button, "run", "Delete run ${name} and everything in it (adapters, previews, logs)?")):
        button.click(deleter(what), inputs=[selected, force, confirmed], outputs=[table, details, config, force],
                     js=f"(name, forced, yes) => [name, forced, !!name && confirm(`{question}`)]")
    table.select(select, inputs=[table], outputs=[selected])
    selected.change(friendly(lambda name: (run_details(ctx, name), run_config_text(ctx, name))), inputs=[selected],
                    outputs=[details, config])
    gr.on([compare.change, metric.change],
          lambda chosen, curve: run_curves(ctx.workspace.runs, chosen, curve),
          inputs=[compare, metric], outputs=[plot])
    plot.change(plot_settings, inputs=[plot, compare, metric], outputs=[plot], show_progress="hidden")
    refresh_inputs, refresh_outputs = [known, compare, selected, metric, plot], [table, known, compare, selected, plot]
    refreshed = friendly(refresh_all)
    refresh.click(refreshed, inputs=refresh_inputs, outputs=refresh_outputs)
    ticks.add(refreshed, refresh_inputs, refresh_outputs)
    ticks.wire()
