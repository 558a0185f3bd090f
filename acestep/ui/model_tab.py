"""The Model tab: which ACE-Step models are on disk, their variant, what is missing, and what the
GPUs hold right now (VRAM, level, the other processes using them).

Reads folders, config files and NVML only (no torch), so the UI process stays light.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from acestep.errors import JobError
from acestep.gpu import format_report, read_gpus
from acestep.jobs import Job
from acestep.models.checkpoints import OFFICIAL_MODELS, list_checkpoints
from acestep.ui.context import AppContext
from acestep.ui.jobs_panel import active_job, build_jobs_panel, friendly, owner_of, submit_cli_job

DOWNLOAD_KIND = "download"

HEADERS = ["Folder", "Kind", "Variant", "Status"]
REQUIRED_FOR_TRAINING = ("acestep-v15-turbo", "vae", "Qwen3-Embedding-0.6B")


def checkpoint_rows(checkpoints_dir: Path) -> list[list[str]]:
    """One row per model folder found: name, kind, variant (from config.json), status."""
    rows = []
    for info in list_checkpoints(checkpoints_dir):
        status = "ready" if info.complete else (info.problem or "incomplete: missing " + ", ".join(info.missing))
        rows.append([info.name, info.kind, info.variant or "", status])
    return rows


def missing_models_text(checkpoints_dir: Path) -> str:
    """Markdown naming the official models not on disk and the command that fetches them."""
    present = {info.name for info in list_checkpoints(checkpoints_dir) if info.complete}
    absent = [m for m in OFFICIAL_MODELS if m.name not in present]
    if not absent:
        return "Every official model is on disk."
    needed = [name for name in REQUIRED_FOR_TRAINING if name not in present]
    lines = []
    if needed:
        lines.append("**Needed to train:** " + ", ".join(f"`{n}`" for n in needed) + ". Download with:")
        lines.append(f"```\nacestep-trainer download {' '.join(needed)} --checkpoints-dir {checkpoints_dir}\n```")
    lines.append("Other official models: " + ", ".join(
        f"`{m.name}` ({m.description})" for m in absent if m.name not in needed))
    return "\n\n".join(lines)


LEVEL_COLOURS = {"ok": "#2e7d32", "tight": "#ef6c00", "critical": "#c62828"}


def gpu_panel(nvml=None) -> str:
    """Markdown for the VRAM panel: one coloured level badge per GPU, then the monitor's report."""
    report = read_gpus(nvml)
    badges = [f'<span style="color:{LEVEL_COLOURS[gpu.level]}">&#9679;</span> **GPU {gpu.index}** {gpu.name}: '
              f"{gpu.free_gib:.1f} GiB free of {gpu.total_gib:.1f} GiB ({gpu.level})" for gpu in report.gpus]
    return "\n\n".join([*badges, f"```\n{format_report(report)}\n```"])


def missing_models(checkpoints_dir: Path) -> list[str]:
    """The official models not complete on disk, those needed to train first."""
    present = {info.name for info in list_checkpoints(checkpoints_dir) if info.complete}
    absent = [m.name for m in OFFICIAL_MODELS if m.name not in present]
    return sorted(absent, key=lambda name: (name not in REQUIRED_FOR_TRAINING, absent.index(name)))


def start_download(ctx: AppContext, names: list[str], owner: str = "") -> Job:
    """Download the official models `names` into the checkpoints folder as a job (resumable: a
    second download of a half-fetched model continues it). Raises JobError for an unknown name
    or while another download runs."""
    known = {m.name for m in OFFICIAL_MODELS}
    if not names:
        raise JobError("Pick the models to download first.")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise JobError(f"Not an official model: {', '.join(unknown)} (choose from {', '.join(sorted(known))}).")
    running = active_job(ctx, DOWNLOAD_KIND)
    if running is not None:
        raise JobError(f"A download is already {running.status} ({running.id}); wait for it or stop it first.")
    return submit_cli_job(ctx, DOWNLOAD_KIND, ["download", *names, "--checkpoints-dir", ctx.workspace.checkpoints],
                          needs_gpu=False, label=", ".join(names), owner=owner)


def build_model_tab(ctx: AppContext) -> None:
    """Add the Model tab's components to the current Blocks context."""
    checkpoints_dir = ctx.workspace.checkpoints
    gr.Markdown(f"Models are read from **{checkpoints_dir}** (change it with `--checkpoints-dir` "
                "or `ACESTEP_CHECKPOINTS_DIR`). The variant comes from each folder's config.json.")
    # Read at every page load (a model downloaded or merged since the app started is listed), and
    # again on Refresh.
    table = gr.Dataframe(headers=HEADERS, value=lambda: checkpoint_rows(checkpoints_dir), interactive=False,
                         elem_id="checkpoints-table")
    missing = gr.Markdown(lambda: missing_models_text(checkpoints_dir), elem_id="missing-models")
    with gr.Row():
        wanted = gr.Dropdown(missing_models(checkpoints_dir), multiselect=True, label="Download",
                             info="Official models from the Hugging Face Hub; an interrupted download continues.",
                             elem_id="model-download-choice", scale=4)
        download = gr.Button("Download", variant="primary", elem_id="model-download", scale=1)
    gr.Markdown("### GPU")
    gpus = gr.Markdown(gpu_panel, elem_id="gpu-panel")
    refresh = gr.Button("Refresh", elem_id="refresh-checkpoints")

    def refreshed():
        return (checkpoint_rows(checkpoints_dir), missing_models_text(checkpoints_dir), gpu_panel(),
                gr.update(choices=missing_models(checkpoints_dir)))

    refresh.click(refreshed, outputs=[table, missing, gpus, wanted])
    wanted.focus(lambda: gr.update(choices=missing_models(checkpoints_dir)), outputs=[wanted])

    with gr.Accordion("Downloads", open=True):
        ticks = build_jobs_panel(ctx, [DOWNLOAD_KIND], "model")["ticks"]

    def download_clicked(names, request: gr.Request):
        job = start_download(ctx, list(names or []), owner_of(request))
        gr.Info(f"Download {job.id}: {job.status}. Its progress is in the table below.")
        return ticks.hurry()

    download.click(friendly(download_clicked), inputs=[wanted], outputs=ticks.pace_outputs)
