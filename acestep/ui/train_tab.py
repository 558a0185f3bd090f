"""The Train tab: a GPU preset and every training option (the form of `acestep.ui.train_form`), the
VRAM estimate against the GPUs' free memory, Start / Stop / Resume of a `train` job, and the run
as it trains: loss, validation loss, learning-rate and gradient-norm plots, progress and ETA, the
log tail and the audio previews; plus saving and loading profiles (`acestep.ui.profiles`).

The run's curves, progress line and previews are read by `acestep.ui.run_progress`. The functions
take the `AppContext` and plain values, so tests call them without a browser; `build_train_tab`
only wires them to Gradio. Nothing here imports torch (the estimate runs in a helper process:
`acestep.ui.train_estimate.VramEstimator`).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import pandas as pd

from acestep.errors import AceStepError, ConfigError, JobError
from acestep.gpu import read_gpus
from acestep.jobs import QUEUED, TRAIN_KIND, Job, training_gpus
from acestep.training.config import TrainingConfig, config_from_dict, config_to_dict, load_config, save_config
from acestep.training.presets import recommendation_message
from acestep.training.run_folders import read_events, run_folders
from acestep.training.run_layout import CONFIG_FILE, EVENTS_FILE
from acestep.training.run_lock import holder
from acestep.preprocess.manifest import MANIFEST_NAME
from acestep.ui.context import AppContext, holds_tensors
from acestep.ui.dropdowns import read_when_opened, relisted
from acestep.ui.jobs_panel import (any_active, build_jobs_panel, friendly, markdown_text, owner_of, submit_cli_job,
                                  waiting_text)
from acestep.ui.profiles import build_profile_section
from acestep.ui.run_progress import plot_frames, preview_files, progress_markdown
from acestep.ui.ticks import POLL_SECONDS, Ticks
from acestep.ui.train_form import (
    FORM_SOURCE, apply_preset_to_values, build_form, config_from_values, initial_config, names_a_folder, ordered,
    preset_choices, suggested_preset,
)
from acestep.ui.train_estimate import VramEstimator, estimate_text, plan_text

CONFIGS_FOLDER = ".configs"  # <runs>/.configs/<run>.toml: the config a Start submitted
PREVIEW_SLOTS = 4
LOG_LINES = 40
# The log box shows its newest lines: Gradio's autoscroll left a run's log, once filled, at its oldest
# line. Not when the reader has scrolled well up to read earlier lines.
SCROLL_LOG_TO_END = """() => {
  const box = document.querySelector('#train-log textarea');
  if (box && (box.scrollTop === 0 || box.scrollHeight - box.scrollTop - box.clientHeight < 2 * box.clientHeight)) {
    box.scrollTop = box.scrollHeight;
  }
}"""
VALIDATION_TITLE = "Validation loss"
NO_VALIDATION_TITLE = "No validation (data.validation_split is 0)"
# the plots, left to right: run_progress.plot_frames' curve, title, element id
PLOTS = (("loss", "Training loss", "train-loss-plot"), ("val_loss", VALIDATION_TITLE, "train-val-plot"),
         ("lr", "Learning rate", "train-lr-plot"),
         ("grad_norm", "Gradient norm (before clipping)", "train-grad-norm-plot"))
PLOTTED = tuple(column for column, _, _ in PLOTS)


# ---- start, stop, resume ------------------------------------------------------------------------------
def prepare_run(ctx: AppContext, values: list) -> tuple[TrainingConfig, Path]:
    """The validated config of the form with its folders checked and made absolute, and its run
    folder (a run name is made up when empty). Raises ConfigError naming the field, or
    PathRefused for a folder outside the app's folders."""
    config = config_from_values(values)
    workspace = ctx.workspace
    tensors = workspace.check_path(config.data.tensors_dir, must_exist=True, what="tensors folder (data.tensors_dir)")
    if not holds_tensors(tensors):
        raise ConfigError(f"data.tensors_dir: {tensors} holds no {MANIFEST_NAME}; preprocess the dataset into it first "
                          "(Preprocess tab).")
    data = config_to_dict(config)
    data["data"]["tensors_dir"] = str(tensors)
    output = workspace.check_path(config.run.output_dir, what="runs folder (run.output_dir)")
    data["run"]["output_dir"] = str(output)
    checkpoints = config.model.checkpoints_dir
    checkpoints = (workspace.check_path(checkpoints, what="checkpoints folder (model.checkpoints_dir)")
                   if checkpoints else workspace.checkpoints)
    data["model"]["checkpoints_dir"] = str(checkpoints)
    model = config.model.checkpoint.strip()
    if names_a_folder(ctx, model):
        data["model"]["checkpoint"] = str(workspace.check_path(model, must_exist=True, what="model (model.checkpoint)"))
    name = config.run.name or time.strftime("%Y%m%d-%H%M%S") + f"-{config.adapter.type}"
    data["run"]["name"] = name
    run_dir = output / name
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"run.name: {run_dir} already holds a run; choose another run name, or pick the run "
                          "below and press Resume.")
    return config_from_dict(data, FORM_SOURCE), run_dir


def start_training(ctx: AppContext, values: list, owner: str = "") -> Job:
    """Check the form, write its config to `<runs>/.configs/<run>.toml` and submit
    `train --config FILE` as a job on the GPUs of run.devices reading `<run>/events.jsonl`: it runs
    at once, or waits in the queue while another job uses one of them. Raises ConfigError,
    PathRefused, or JobError while a job for the same run is queued or running."""
    config, run_dir = prepare_run(ctx, values)
    _refuse_when_training(ctx, run_dir.name)
    config_file = save_config(config, ctx.workspace.runs / CONFIGS_FOLDER / f"{run_dir.name}.toml")
    return submit_cli_job(ctx, TRAIN_KIND, ["train", "--config", config_file], needs_gpu=True,
                          gpus=training_gpus(config.run.devices), label=run_dir.name, owner=owner,
                          events_path=run_dir / EVENTS_FILE)


def resume_training(ctx: AppContext, run_text: str, owner: str = "") -> Job:
    """Submit `train --resume RUN_DIR` for a run folder of the workspace (queued behind a running
    GPU job). Raises PathRefused, ConfigError for a folder that is not a run, or JobError while
    that run is queued or training (as a job, or in a process of its own)."""
    run_dir = ctx.workspace.check_path(run_text, must_exist=True, what="run folder")
    _refuse_when_training(ctx, run_dir.name)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (it has no {CONFIG_FILE}); pick a run to resume.")
    trainer = holder(run_dir)  # a process outside the app's jobs (a terminal) may train it
    if trainer is not None:
        raise JobError(f"Run {run_dir.name} is being trained by {trainer}, outside this app's jobs; wait for it "
                       "to end or stop it, then resume.")
    devices = load_config(run_dir / CONFIG_FILE).run.devices  # what `train --resume` runs on
    return submit_cli_job(ctx, TRAIN_KIND, ["train", "--resume", run_dir], needs_gpu=True,
                          gpus=training_gpus(devices), label=run_dir.name, owner=owner,
                          events_path=run_dir / EVENTS_FILE)


def training_jobs(ctx: AppContext) -> list[Job]:
    """The training jobs running (first) and queued, in queue order."""
    jobs = [job for job in ctx.jobs.poll() if job.kind == TRAIN_KIND and not job.finished]
    return sorted(jobs, key=lambda job: job.status == QUEUED)


def stop_training(ctx: AppContext) -> str:
    """Stop the running training job (it saves a checkpoint after its step), or the first queued
    one when none runs; the message. Queued jobs are cancelled from the jobs table."""
    jobs = training_jobs(ctx)
    if not jobs:
        return "No training job is queued or running."
    job = ctx.jobs.stop(jobs[0].id)
    return f"Training {job.label}: {job.status}."


def _refuse_when_training(ctx: AppContext, run_name: str) -> None:
    for job in training_jobs(ctx):
        if job.label == run_name:
            raise JobError(f"Run {run_name} is already {job.status} ({job.id}); stop it or pick another run name.")


# ---- watching a run --------------------------------------------------------------------------------------
def list_runs(ctx: AppContext) -> list[str]:
    """The run folders in the workspace's runs folder (relative to the workspace), newest first."""
    return [ctx.workspace.relative(folder) for folder in run_folders(ctx.workspace.runs)]


def run_job(ctx: AppContext, run_dir: Path) -> Job | None:
    """The newest training job of the run folder, or None."""
    events = str(Path(run_dir) / EVENTS_FILE)
    return next((job for job in reversed(ctx.jobs.list_jobs()) if job.kind == TRAIN_KIND and job.events_path == events),
                None)


def training_status(ctx: AppContext) -> tuple[Job | None, str]:
    """(the running training job, else the first queued one, or None; a status line naming the
    running job and the queue)."""
    jobs = training_jobs(ctx)
    if not jobs:
        return None, "No training job is running."
    every_job = ctx.jobs.list_jobs()

    def line(job: Job) -> str:
        who = f" by {job.owner}" if job.owner else ""
        waiting = waiting_text(job, every_job) if job.status == QUEUED else ""
        return f"**{job.label}**{who}: {job.status}" + (f" ({markdown_text(waiting)})" if waiting else "")

    text = f"Training {line(jobs[0])}."
    if len(jobs) > 1:
        text += " Queued next: " + "; ".join(line(job) for job in jobs[1:]) + "."
    return jobs[0], text


class RunSnapshot(NamedTuple):
    """What the tab shows of one run, read from its folder and its newest job."""

    events_signature: tuple  # (size, mtime) of events.jsonl: the plots are redrawn only when it changes
    progress: str
    frames: dict[str, pd.DataFrame]
    log: str
    previews: tuple[str, list[tuple[str, Path]]]
    run_dir: Path


def run_snapshot(ctx: AppContext, run_text: str) -> RunSnapshot:
    """The run folder `run_text` (relative to the workspace or absolute) as the tab shows it.
    Raises PathRefused for a folder outside the app's folders."""
    run_dir = ctx.workspace.check_path(run_text, what="run folder")
    try:
        stat = (run_dir / EVENTS_FILE).stat()
        signature = (str(run_dir), stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError:
        signature = (str(run_dir),)
    events = read_events(run_dir / EVENTS_FILE)
    job = run_job(ctx, run_dir)
    log = ctx.jobs.tail_log(job.id, LOG_LINES) if job else ""
    if job is not None and job.finished and job.message:
        log += f"\n[{job.status}] {job.message}"
    return RunSnapshot(signature, progress_markdown(events), plot_frames(events), log.strip(), preview_files(run_dir),
                       run_dir)


def validation_title(run_dir: Path) -> str:
    """The validation plot's title. A run without a validation split (its config.toml's
    data.validation_split is 0) says so, instead of showing empty axes as if it were still to come."""
    try:
        split = load_config(run_dir / CONFIG_FILE).data.validation_split
    except (OSError, ConfigError):
        return VALIDATION_TITLE
    return VALIDATION_TITLE if split > 0 else NO_VALIDATION_TITLE


def tensors_choices(ctx: AppContext) -> list[str]:
    """The preprocessed folders in the workspace's tensors folder (relative to the workspace)."""
    folders = [folder for folder in sorted(ctx.workspace.tensors.glob("*/")) if holds_tensors(folder)]
    return [ctx.workspace.relative(folder) for folder in folders]


# ---- the tab ------------------------------------------------------------------------------------------
def build_train_tab(ctx: AppContext) -> None:
    """Add the Train tab's components and events to the current Blocks context."""
    report = read_gpus()
    preset = suggested_preset(report)
    estimator = VramEstimator()  # one helper process per app, started at the first estimate
    gr.Markdown("Pick the preset for your GPU, set the tensors folder and a run name, then **Start**. Each setting "
                "explains itself; the rest are folded below the basics. The estimate follows every change.")
    totals = [gpu.total_bytes for gpu in report.gpus]
    preset_input = gr.Dropdown(preset_choices(), value=preset, label="GPU preset",
                               info="Suggested: " + recommendation_message(max(totals) if totals else None),
                               elem_id="train-preset")
    inputs = build_form(initial_config(ctx, preset),
                        {"data.tensors_dir": tensors_choices(ctx), "model.checkpoint": ctx.workspace.dit_names()})
    form = ordered(inputs)
    estimate = gr.Markdown("Estimating the VRAM needed...", elem_id="train-estimate")
    build_profile_section(ctx, form)
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop", interactive=False)
        resume = gr.Button("Resume the run below", elem_id="train-resume")
    status = gr.Markdown(elem_id="train-status")
    runs = list_runs(ctx)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", allow_custom_value=True,
                          elem_id="train-run", scale=4)
        refresh_runs = gr.Button("↻", elem_id="train-run-refresh", min_width=40, scale=0)
    # Lists that follow the disk are read again when opened: a folder preprocessed, a model
    # downloaded or a run started since the page loaded is offered.
    runs_shown = read_when_opened(run, lambda: list_runs(ctx))
    read_when_opened(inputs["data.tensors_dir"], lambda: tensors_choices(ctx))
    read_when_opened(inputs["model.checkpoint"], ctx.workspace.dit_names)
    progress = gr.Markdown(elem_id="train-progress")
    with gr.Row():
        plots = [gr.LinePlot(pd.DataFrame(columns=["step", column]), x="step", y=column, title=title,
                             elem_id=elem_id) for column, title, elem_id in PLOTS]
    previews_label = gr.Markdown(elem_id="train-previews")
    with gr.Row():
        players = [gr.Audio(type="filepath", interactive=False, visible=False, elem_id=f"train-preview-{i}")
                   for i in range(PREVIEW_SLOTS)]
    log = gr.Textbox(label="Log", lines=12, max_lines=12, interactive=False, autoscroll=True, elem_id="train-log")
    with gr.Accordion("Training jobs: the queue, cancelling a waiting run, logs", open=False):
        build_jobs_panel(ctx, [TRAIN_KIND], "train-jobs")
    seen = gr.State({})
    ticks = Ticks(gr.Timer(POLL_SECONDS), busy=lambda: any_active(ctx, [TRAIN_KIND]))

    def on_change(data):
        try:
            config = config_from_values([data[component] for component in form], complete=False)
        except ConfigError as error:
            return f"Fix the settings to see the estimate:\n```\n{error}\n```"
        report = read_gpus()
        try:
            estimate_part = estimate_text(ctx, config, report, estimator)
        except AceStepError as error:
            estimate_part = str(error)
        return "\n\n".join(part for part in (plan_text(ctx, config, report), estimate_part) if part)

    def on_start(data, request: gr.Request):
        job = start_training(ctx, [data[component] for component in form], owner_of(request))
        gr.Info(f"Training {job.label}: {job.status}.")
        watched = ctx.workspace.relative(Path(job.events_path).parent)
        return *relisted(list(dict.fromkeys([watched, *list_runs(ctx)])), watched), *ticks.hurry()

    def on_resume(run_text, request: gr.Request):
        job = resume_training(ctx, run_text, owner_of(request))
        gr.Info(f"Resuming {job.label}: {job.status}.")
        return ticks.hurry()

    def on_tick(run_text, state):
        job, status_text = training_status(ctx)
        buttons = [gr.update(interactive=True), gr.update(interactive=job is not None), gr.update(interactive=True)]
        run_updates = [gr.skip(), gr.skip()]  # the run dropdown and the items it shows
        if not run_text:  # a page opened with no run chosen watches the training run, else the newest
            runs = list_runs(ctx)
            run_text = ctx.workspace.relative(Path(job.events_path).parent) if job is not None else (
                runs[0] if runs else None)
            if run_text:
                run_updates = list(relisted(runs, run_text))
        return [*buttons, status_text, *run_updates, *_watch_outputs(ctx, run_text, state)]

    gr.on(None, _errors_shown(on_change), inputs=set(form), outputs=[estimate], trigger_mode="always_last",
          show_progress="minimal", concurrency_limit=1)
    preset_input.input(friendly(lambda name, *values: apply_preset_to_values(list(values), name)),
                       inputs=[preset_input, *form], outputs=form)
    start.click(_errors_shown(on_start), inputs=set(form), outputs=[run, runs_shown, *ticks.pace_outputs])
    stop.click(friendly(lambda: gr.Info(stop_training(ctx))))
    resume.click(_errors_shown(on_resume), inputs=[run], outputs=ticks.pace_outputs)
    refresh_runs.click(lambda current: relisted(list_runs(ctx), current), inputs=[run], outputs=[run, runs_shown])
    log.change(None, js=SCROLL_LOG_TO_END)
    ticks.add(on_tick, [run, seen], [start, stop, resume, status, run, runs_shown, progress, *plots, log,
                                      previews_label, *players, seen])
    ticks.wire()


def _watch_outputs(ctx: AppContext, run_text: str | None, state: dict) -> list:
    """The timer's updates of progress, plots, log, previews and the state; what did not change
    is skipped, so a preview being listened to is not reloaded."""
    if not run_text:
        return ["Pick a run to watch, or start one.", *[gr.skip()] * (len(PLOTTED) + 2 + PREVIEW_SLOTS), state]
    try:
        snapshot = run_snapshot(ctx, run_text)
    except AceStepError as error:
        return [str(error), *[gr.skip()] * (len(PLOTTED) + 2 + PREVIEW_SLOTS), state]
    new_state = dict(state)
    plots = [gr.skip()] * len(PLOTTED)
    if state.get("events") != snapshot.events_signature:
        # the run's config is read only when the plots are redrawn, not at every tick
        validation = gr.update(value=snapshot.frames["val_loss"], title=validation_title(snapshot.run_dir))
        plots = [validation if name == "val_loss" else snapshot.frames[name] for name in PLOTTED]
        new_state["events"] = snapshot.events_signature
    log = gr.skip() if state.get("log") == snapshot.log else snapshot.log
    new_state["log"] = snapshot.log
    label, files = snapshot.previews
    previews = [gr.skip()] * (1 + PREVIEW_SLOTS)
    if state.get("previews") != [str(path) for _, path in files] or state.get("previews_label") != label:
        previews = [label] + [gr.update(value=str(files[i][1]), label=files[i][0], visible=True) if i < len(files)
                              else gr.update(value=None, visible=False) for i in range(PREVIEW_SLOTS)]
        new_state["previews"], new_state["previews_label"] = [str(path) for _, path in files], label
    return [snapshot.progress, *plots, log, *previews, new_state]


def _errors_shown(function):
    """`friendly(function)` whose signature and annotations Gradio still reads (for gr.Request)."""
    return functools.update_wrapper(friendly(function), function)
