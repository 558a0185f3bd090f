"""The Preprocess tab: encode a dataset into training tensors with the `preprocess` command as a
job, follow it song by song, and see what the tensors folder holds when it ends (its manifest:
the samples encoded, the files that failed and why).

    form = PreprocessForm(dataset="datasets/my-songs.json", out="tensors/my-songs")
    job = start_preprocess(ctx, form, owner="ann")
    progress_markdown(ctx, newest_job(ctx, PREPROCESS))   # "**3/10** songs/a.wav done · ETA 0:42"
    summary_markdown(ctx, job, form.out)                  # the command's summary + the manifest

The manifest is read as JSON here: `acestep.preprocess` imports torch, which the UI never loads.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from acestep.errors import AceStepError
from acestep.jobs import Job, job_gpus
from acestep.models.checkpoints import DIT, list_checkpoints
from acestep.preprocess.manifest import MANIFEST_NAME
from acestep.ui.context import AppContext, holds_tensors
from acestep.ui.dataset_edits import dataset_files
from acestep.ui.dropdowns import read_when_opened
from acestep.ui.jobs_panel import (
    active_job,
    build_jobs_panel,
    buttons,
    cancel_job,
    check_device,
    friendly,
    job_heading,
    job_out_folder,
    job_state,
    latest_progress,
    newest_job,
    owner_of,
    submit_cli_job,
    summary_from_log,
)
from acestep.ui.ticks import POLL_SECONDS, Ticks

PREPROCESS = "preprocess"  # the job kind
DEFAULT_CHECKPOINT = "acestep-v15-turbo"
NORMALIZATIONS = {
    "none": "none",
    "peak": "peak (-1 dBFS)",
    "lufs": "lufs (-14 LUFS)",
    "peak_lufs": "peak_lufs (both)",
}
MAX_DURATION_LIMIT = 600.0  # the checkpoint's silence latent covers 600 s
MAX_FAILED_SHOWN = 50
SUMMARY_START = re.compile(r"^\d+ encoded, ")  # the first line of the preprocess command's summary
_STEP = re.compile(r"^(?P<status>pass 2|\S+)\s+(?P<rest>.*?)\s+elapsed\s+(?P<elapsed>\S+)\s+ETA\s+(?P<eta>\S+)$")


@dataclass
class PreprocessForm:
    """What the Preprocess tab's form says (the options of `acestep-trainer preprocess`)."""

    dataset: str = ""
    out: str = ""
    checkpoint: str = DEFAULT_CHECKPOINT
    max_duration: float = 240.0
    normalization: str = "none"
    low_vram: bool = False
    device: str = "auto"


@dataclass
class PreprocessStep:
    """One `[i/n]` line of the preprocess command, read back from the job's progress event."""

    index: int
    total: int
    status: str  # encoding, done, skipped, failed, pass 2 (low VRAM)
    source: str  # the audio path as the dataset lists it
    detail: str  # "187 frames", or why it failed
    elapsed: str
    eta: str


def dataset_choices(ctx: AppContext) -> list[str]:
    """The dataset JSONs under the workspace's datasets/ folder (the Dataset tab's list:
    `acestep.ui.dataset_edits.dataset_files`) and the demo's one, as paths relative to the workspace."""
    choices = [ctx.workspace.relative(path) for path in dataset_files(ctx.workspace)]
    default = ctx.defaults.get("dataset")
    if default and ctx.workspace.relative(Path(default)) not in choices:
        choices.insert(0, ctx.workspace.relative(Path(default)))
    return choices


def default_dataset(ctx: AppContext) -> str:
    """The dataset the form starts with: the demo's, else the one saved last in datasets/ (the one
    just built, as a rule), else ''."""
    default = ctx.defaults.get("dataset")
    if default:
        return ctx.workspace.relative(Path(default))
    found = dataset_files(ctx.workspace)
    return ctx.workspace.relative(max(found, key=lambda path: path.stat().st_mtime)) if found else ""


def default_out(ctx: AppContext, dataset_text: str | None) -> str:
    """tensors/<dataset file name without .json>, or '' without a dataset."""
    name = Path(str(dataset_text or "").strip()).stem
    return ctx.workspace.relative(ctx.workspace.tensors / name) if name else ""


def default_checkpoint(ctx: AppContext) -> str:
    """acestep-v15-turbo when it is there, else the first DiT folder, else ''."""
    choices = ctx.workspace.dit_names()
    return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in choices else (choices[0] if choices else "")


def check_checkpoint(ctx: AppContext, name: str) -> str:
    """`name` when it is a complete DiT folder in the checkpoints folder; else AceStepError saying
    what is missing and how to get it."""
    name = (name or "").strip()
    infos = {info.name: info for info in list_checkpoints(ctx.workspace.checkpoints) if info.kind == DIT}
    if name not in infos:
        have = ", ".join(infos) or "none"
        raise AceStepError(f"No DiT folder {name!r} in {ctx.workspace.checkpoints} (found: {have}). Download it "
                           f"with `acestep-trainer download {name or DEFAULT_CHECKPOINT} --checkpoints-dir "
                           f"{ctx.workspace.checkpoints}`.")
    info = infos[name]
    if not info.complete:
        raise AceStepError(f"{info.path} is incomplete: {info.problem or 'missing ' + ', '.join(info.missing)}. "
                           f"Download it again with `acestep-trainer download {name}`.")
    return name


def preprocess_args(ctx: AppContext, form: PreprocessForm) -> list[str]:
    """The `preprocess` command line the form asks for (without the Python and module in front).
    Raises PathRefused / AceStepError naming the field that is wrong."""
    dataset = ctx.workspace.check_path(form.dataset, must_exist=True, what="dataset")
    if not dataset.is_file() or dataset.suffix.lower() != ".json":
        raise AceStepError(f"{dataset} is not a dataset JSON; build one on the Dataset tab first.")
    out = ctx.workspace.check_path(form.out, what="output folder")
    if out.exists() and not out.is_dir():
        raise AceStepError(f"The output folder {out} is a file; choose a folder.")
    checkpoint = check_checkpoint(ctx, form.checkpoint)
    try:
        max_duration = float(form.max_duration)
    except (TypeError, ValueError):
        raise AceStepError(f"Max duration must be a number of seconds, got {form.max_duration!r}.") from None
    if not math.isfinite(max_duration) or not 0 < max_duration <= MAX_DURATION_LIMIT:
        raise AceStepError(f"Max duration must be more than 0 and at most {MAX_DURATION_LIMIT:g} seconds, "
                           f"got {form.max_duration!r}.")
    if form.normalization not in NORMALIZATIONS:
        raise AceStepError(f"Normalisation {form.normalization!r} is unknown; choose one of "
                           f"{', '.join(NORMALIZATIONS)}.")
    device = check_device(form.device)
    args = ["preprocess", "--dataset", str(dataset), "--checkpoint", checkpoint, "--out", str(out),
            "--max-duration", f"{max_duration:g}", "--normalization", form.normalization,
            "--checkpoints-dir", str(ctx.workspace.checkpoints),
            "--verbose"]  # a line when each sample starts: a long song must not leave the last one on show
    if form.low_vram:
        args.append("--low-vram")
    if device:
        args += ["--device", device]
    return args


def start_preprocess(ctx: AppContext, form: PreprocessForm, owner: str = "") -> Job:
    """Submit the preprocess job. It is a GPU job (queued behind other GPU jobs) unless the device
    is cpu: "auto" picks CUDA whenever there is one. Raises AceStepError while another
    preprocess job is queued or running."""
    running = active_job(ctx, PREPROCESS)
    if running is not None:
        raise AceStepError(f"Preprocess job {running.id} is {running.status}; wait for it to end or cancel it.")
    args = preprocess_args(ctx, form)
    label = f"{Path(args[2]).stem} -> {ctx.workspace.relative(Path(args[6]))}"
    gpus = job_gpus(form.device)  # "auto" runs on cuda (GPU 0) when there is one
    return submit_cli_job(ctx, PREPROCESS, args, needs_gpu=bool(gpus), gpus=gpus, label=label, owner=owner)


def parse_step(event: dict | None) -> PreprocessStep | None:
    """The sample, status, elapsed time and ETA of a preprocess job's progress event."""
    if not event or event.get("type") != "progress":
        return None
    match = _STEP.match(str(event.get("message", "")))
    if not match:
        return None
    source, _, detail = match["rest"].partition("  ")
    return PreprocessStep(int(event.get("index", 0)), int(event.get("total", 0)), match["status"], source.strip(),
                          detail.strip(), match["elapsed"], match["eta"])


def progress_markdown(ctx: AppContext, job: Job | None) -> str:
    """The job's status and the sample it works on or last finished: '**3/10** songs/a.wav encoding ·
    elapsed 0:12 · ETA 0:42'."""
    if job is None:
        return "No preprocess job has run yet."
    lines = [job_heading(job, ctx.jobs.list_jobs())]
    step = parse_step(latest_progress(ctx, job))
    if step is not None:
        line = f"**{step.index}/{step.total}** {shown_source(ctx, step.source)} {step.status}"
        if step.detail:
            line += f": {step.detail}"
        line += f" · elapsed {step.elapsed}" + ("" if job.finished else f" · ETA {step.eta}")
        lines.append(line)
    elif job.active:
        lines.append("Loading the encoders...")
    return "\n\n".join(lines)


def read_manifest_json(folder: Path) -> dict | None:
    """The folder's manifest as a dict; None when there is none. Raises AceStepError when it
    cannot be read."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AceStepError(f"{path} cannot be read ({error}); preprocess again into an empty folder.") from None
    if not isinstance(data, dict):
        raise AceStepError(f"{path} is not a JSON object; preprocess again into an empty folder.")
    return data


def manifest_markdown(ctx: AppContext, folder: Path) -> str:
    """What a tensors folder holds: samples, seconds of audio, the model, and the failed files with
    their reasons ('' when it has no manifest)."""
    try:
        manifest = read_manifest_json(folder)
    except AceStepError as error:
        return str(error)
    if manifest is None:
        return ""
    samples = [s for s in manifest.get("samples", []) if isinstance(s, dict)]
    failed = [f for f in manifest.get("failed", []) if isinstance(f, dict)]
    seconds = sum(float(s.get("duration", 0) or 0) for s in samples)
    model = manifest.get("model", {}) or {}
    checkpoint = Path(str(model.get("checkpoint", "?"))).name
    lines = [f"**{ctx.workspace.relative(folder)}**: {len(samples)} sample(s), {seconds:.1f} s of audio, "
             f"{len(failed)} failed; made with {checkpoint} ({model.get('variant') or '?'})"]
    settings = manifest.get("settings", {}) or {}
    if settings:
        trigger = manifest.get("trigger_tag") or ""
        lines.append(f"max duration {settings.get('max_duration', '?')} s, normalisation "
                     f"{settings.get('normalization', '?')}, "
                     + (f"trigger tag `{trigger}`" if trigger else "no trigger tag"))
    if failed:
        table = ["| Failed file | Why |", "|---|---|"]
        table += [f"| {_table_cell(shown_source(ctx, f.get('source', '?')))} | {_table_cell(f.get('reason', ''))} |"
                  for f in failed[:MAX_FAILED_SHOWN]]
        if len(failed) > MAX_FAILED_SHOWN:
            table.append(f"| ... | {len(failed) - MAX_FAILED_SHOWN} more in {MANIFEST_NAME} |")
        lines.append("\n".join(table))
    return "\n\n".join(lines)


def shown_source(ctx: AppContext, source) -> str:
    """A sample's audio path for display: relative to the workspace when it lies inside it."""
    path = Path(str(source))
    return ctx.workspace.relative(path) if path.is_absolute() else str(source)


def _table_cell(value) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def summary_markdown(ctx: AppContext, job: Job | None, out_text: str = "") -> str:
    """When the newest job has ended: its result (the command's summary, or the error) and what its
    tensors folder now holds. Before that: what the form's output folder already holds."""
    parts = []
    folder = None
    if job is not None and job.finished:
        # The counts line of the command's summary; the failures come from the manifest below.
        summary = summary_from_log(ctx.jobs.tail_log(job.id, 400), SUMMARY_START)
        result = summary[0] if summary else job.message
        parts.append(f"Job **{job.id}** {job.status}" + (f": {result}" if result else ""))
        folder = job_out_folder(job)
    elif out_text:
        try:
            folder = ctx.workspace.check_path(out_text, what="output folder")
        except AceStepError:
            folder = None
        if folder is not None and holds_tensors(folder):
            parts.append("Already in the output folder (a new run skips the unchanged songs):")
    if folder is not None:
        parts.append(manifest_markdown(ctx, folder))
    return "\n\n".join(part for part in parts if part)


def build_preprocess_tab(ctx: AppContext) -> None:
    """Add the Preprocess tab's components to the current Blocks context."""
    gr.Markdown("Encode a dataset into the tensors training reads (VAE latents, encoded caption and lyrics). "
                "Stopping keeps what is done; running again skips the songs that did not change.")
    with gr.Row():
        # The defaults are read at each page load: a dataset saved since the app started is offered.
        dataset = gr.Dropdown(dataset_choices(ctx), value=lambda: default_dataset(ctx) or None, label="Dataset",
                              allow_custom_value=True, elem_id="preprocess-dataset")
        out = gr.Textbox(lambda: default_out(ctx, default_dataset(ctx)), label="Output folder (tensors)",
                         elem_id="preprocess-out")
        checkpoint = gr.Dropdown(ctx.workspace.dit_names(), value=default_checkpoint(ctx) or None,
                                 label="Checkpoint (DiT)", elem_id="preprocess-checkpoint")
    with gr.Row():
        max_duration = gr.Number(240, label="Max duration (seconds of each song)", minimum=1,
                                 maximum=MAX_DURATION_LIMIT, elem_id="preprocess-max-duration")
        normalization = gr.Dropdown([(text, name) for name, text in NORMALIZATIONS.items()], value="none",
                                    label="Loudness normalisation", elem_id="preprocess-normalization")
        low_vram = gr.Checkbox(label="Low VRAM (two passes, same tensors)", elem_id="preprocess-low-vram")
        device = gr.Dropdown(["auto", "cuda", "cpu", "mps"], value="auto", label="Device", allow_custom_value=True,
                             elem_id="preprocess-device")
    with gr.Row():
        start = gr.Button("Start preprocessing", variant="primary", elem_id="preprocess-start")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="preprocess-cancel")
    progress = gr.Markdown(lambda: progress_markdown(ctx, newest_job(ctx, PREPROCESS)),
                           elem_id="preprocess-progress")
    summary = gr.Markdown(lambda: summary_markdown(ctx, newest_job(ctx, PREPROCESS), default_out(
        ctx, default_dataset(ctx))), elem_id="preprocess-summary")
    shown = gr.State("")
    ticks = Ticks(gr.Timer(POLL_SECONDS), busy=lambda: active_job(ctx, PREPROCESS) is not None)
    with gr.Accordion("Preprocess jobs and their logs", open=False):
        build_jobs_panel(ctx, [PREPROCESS], "preprocess")

    def on_start(dataset_text, out_text, checkpoint_name, seconds, normalization_name, low_vram_on, device_name,
                 request: gr.Request):
        form = PreprocessForm(dataset_text or "", out_text or "", checkpoint_name or "", seconds,
                              normalization_name, bool(low_vram_on), device_name)
        job = friendly(start_preprocess)(ctx, form, owner_of(request))
        return (progress_markdown(ctx, job), *buttons(ctx, PREPROCESS), *ticks.hurry())

    def on_cancel():
        gr.Info(friendly(cancel_job)(ctx, PREPROCESS))
        return buttons(ctx, PREPROCESS)

    def on_tick(out_text, last):
        job = newest_job(ctx, PREPROCESS)
        state = job_state(ctx, job)
        text = summary_markdown(ctx, job, out_text) if state != last else gr.update()
        return (progress_markdown(ctx, job), *buttons(ctx, PREPROCESS), text, state)

    # read again when opened: a dataset saved or a model downloaded since the page loaded is offered
    read_when_opened(dataset, lambda: dataset_choices(ctx))
    dataset.change(lambda text: default_out(ctx, text), inputs=[dataset], outputs=[out])
    out.blur(lambda text: summary_markdown(ctx, None, text), inputs=[out], outputs=[summary])
    read_when_opened(checkpoint, ctx.workspace.dit_names)
    start.click(on_start, inputs=[dataset, out, checkpoint, max_duration, normalization, low_vram, device],
                outputs=[progress, start, cancel, *ticks.pace_outputs])
    cancel.click(on_cancel, outputs=[start, cancel])
    ticks.add(on_tick, [out, shown], [progress, start, cancel, summary, shown])
    ticks.wire()
